"""What the reports say, in words: one table for every place that writes a density result
for people (the SR's readable sentence, the summary image, the hook payloads, FHIR).

The four report sentences are those of the US FDA MQSA final rule (in force since
10 September 2024), one per BI-RADS breast composition category; the short class names
follow the BI-RADS atlas. docs/sr.md shows where each appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: MQSA report sentence per BI-RADS breast composition category.
MQSA_SENTENCES: dict[str, str] = {
    "A": "The breasts are almost entirely fatty.",
    "B": "There are scattered areas of fibroglandular density.",
    "C": "The breasts are heterogeneously dense, which may obscure small masses.",
    "D": "The breasts are extremely dense, which lowers the sensitivity of mammography.",
}

#: Short name of each category, as in "Probability of BI-RADS C (heterogeneously dense)".
CLASS_NAMES: dict[str, str] = {
    "A": "almost entirely fatty",
    "B": "scattered fibroglandular density",
    "C": "heterogeneously dense",
    "D": "extremely dense",
}

#: Written on every report of a model whose manifest says it is not for clinical use.
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

SIDE_NAMES: dict[str, str] = {"R": "Right", "L": "Left"}


def probability_label(category: str) -> str:
    """``"Probability of BI-RADS C (heterogeneously dense)"``."""
    return f"Probability of BI-RADS {category} ({CLASS_NAMES[category]})"


def category_line(category: str) -> str:
    """``"BI-RADS C. The breasts are heterogeneously dense, ..."``."""
    return f"BI-RADS {category}. {MQSA_SENTENCES[category]}"


def views_note(used: Sequence[str], missing: Sequence[str], not_used: str = "") -> str:
    """``"Views used: R-CC, R-MLO; missing: L-CC, L-MLO."``, with ``; images not used:
    <not_used>`` when some were left out; empty when nothing is missing or left out."""
    if not missing and not not_used:
        return ""
    text = f"Views used: {', '.join(used) or 'none'}"
    if missing:
        text += f"; missing: {', '.join(missing)}"
    if not_used:
        text += f"; images not used: {not_used}"
    return text + "."


def reasons(warnings: Iterable[str], *, assessable: bool) -> list[str]:
    """Why a study (or some of its images) could not be assessed, from a result's
    warnings: all of them for a study not assessable, else the images not used."""
    out = []
    for w in warnings:
        if NOT_FOR_CLINICAL_USE.lower() in w.lower():
            continue  # said once, at the end of the sentence
        if w.startswith("not assessable: "):
            w = w[len("not assessable: "):]
        if not assessable or "not used" in w:
            out.append(w)
    return out


def report_sentence(*, category: str | None, sides: dict[str, str | None], dense: bool | None,
                    used: Sequence[str] = (), missing: Sequence[str] = (),
                    not_used: str = "", reasons: Iterable[str] = (),
                    low_confidence: Sequence[str] = (),
                    not_for_clinical_use: bool = False) -> str:
    """The readable sentence of a result, category first.

    ``"BI-RADS breast density (AI): C. The breasts are heterogeneously dense, which may
    obscure small masses. Right breast C, left breast B. Dense: yes."`` then, where they
    apply, the partial-study note (views used and missing), the reasons a study was not
    assessable and ``NOT FOR CLINICAL USE``.

    Parameters
    ----------
    category
        The exam's class, or None when the study was not assessable.
    sides
        ``{"R": "C", "L": None}``: a breast's class, None for a breast not assessed.
    dense
        The dense flag (None when not assessable).
    used, missing
        Screening slots used and missing ("R-CC", ...).
    not_used
        Images left out and why, one line (``R-CC spot_compression; L-MLO too_small``).
    reasons
        Why the study (or a view) could not be assessed.
    low_confidence
        Why an assessed exam is low-confidence (input quality, an unsure model).
    """
    parts: list[str] = []
    if category is None:
        why = "; ".join(reasons) or "no usable views"
        parts.append(f"BI-RADS breast density (AI): not assessable ({why}).")
    else:
        parts.append(f"BI-RADS breast density (AI): {category}. {MQSA_SENTENCES[category]}")
        side_text = []
        for side in ("R", "L"):
            value = sides.get(side)
            name = SIDE_NAMES[side] if not side_text else SIDE_NAMES[side].lower()
            side_text.append(f"{name} breast {value}" if value else
                             f"{name} breast not assessed")
        parts.append(", ".join(side_text) + ".")
        if dense is not None:
            parts.append(f"Dense: {'yes' if dense else 'no'}.")
    note = views_note(used, missing, not_used)
    if note:
        parts.append(("Partial study. " if category is not None and missing else "") + note)
    if low_confidence:
        parts.append("Low confidence, review the images: " + "; ".join(low_confidence) + ".")
    if not_for_clinical_use:
        parts.append(f"{NOT_FOR_CLINICAL_USE} (demo model).")
    return " ".join(parts)


def payload_wording(payload: dict[str, Any]) -> dict[str, Any]:
    """Add ``mqsa_sentence`` beside each category of a hook payload (result JSON), in place."""
    exam = payload.get("exam")
    if isinstance(exam, dict) and exam.get("category") in MQSA_SENTENCES:
        exam["mqsa_sentence"] = MQSA_SENTENCES[exam["category"]]
    for breast in (payload.get("breasts") or {}).values():
        if isinstance(breast, dict) and breast.get("category") in MQSA_SENTENCES:
            breast["mqsa_sentence"] = MQSA_SENTENCES[breast["category"]]
    return payload


__all__ = ["CLASS_NAMES", "MQSA_SENTENCES", "NOT_FOR_CLINICAL_USE", "SIDE_NAMES",
           "category_line", "payload_wording", "probability_label", "reasons",
           "report_sentence", "views_note"]
