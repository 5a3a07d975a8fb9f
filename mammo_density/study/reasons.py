"""Why an image of a study is not used: one coded reason and one sentence each.

The codes are stable (they go into results, ``status``, the SR's text, logs and
dashboards); the sentences are for people. :func:`note` and :func:`parse_note` are the one
way a reason is written into, and read back from, the listener's state database.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Coded reason an image is not used for the density assessment."""

    # the screening-image gate (mammo_density.study.gate)
    QUALITY_CONTROL = "quality_control"
    STEREOTACTIC = "stereotactic"
    SPECIMEN = "specimen"
    TOO_SMALL = "too_small"
    SPOT_COMPRESSION = "spot_compression"
    MAGNIFICATION = "magnification"
    IMPLANT_DISPLACED = "implant_displaced"
    MODIFIED_VIEW = "modified_view"
    NON_STANDARD_VIEW = "non_standard_view"
    NO_LATERALITY = "no_laterality"
    NO_VIEW = "no_view"
    DIGITISED_FILM_OFF = "digitised_film_off"
    NOT_MAMMOGRAM = "not_mammogram"
    TOMOSYNTHESIS = "tomosynthesis"
    # image selection (mammo_density.study.selection)
    RETAKE_SUPERSEDED = "retake_superseded"
    FOR_PROCESSING_SUPERSEDED = "for_processing_superseded"
    # the pipeline
    UNREADABLE = "unreadable"


SENTENCES: dict[Reason, str] = {
    Reason.QUALITY_CONTROL: "a quality-control image (flat field, phantom, calibration), "
                            "not a patient exposure",
    Reason.STEREOTACTIC: "a stereotactic (biopsy guidance) image, not a screening view",
    Reason.SPECIMEN: "an image of a tissue specimen, not of a breast",
    Reason.TOO_SMALL: "too small to show a whole breast",
    Reason.SPOT_COMPRESSION: "a spot-compression view, not a screening view",
    Reason.MAGNIFICATION: "a magnification view, not a screening view",
    Reason.IMPLANT_DISPLACED: "an implant-displaced view; the standard views of that "
                              "breast are used",
    Reason.MODIFIED_VIEW: "a modified view (rolled, cleavage, axillary tail, ...), not a "
                          "screening view",
    Reason.NON_STANDARD_VIEW: "not a CC or MLO view",
    Reason.NO_LATERALITY: "the header does not say which breast (R or L)",
    Reason.NO_VIEW: "the header does not say which view",
    Reason.DIGITISED_FILM_OFF: "a digitised film (Secondary Capture); digitised film is "
                               "assessed only with the digitised_film setting",
    Reason.NOT_MAMMOGRAM: "not a mammogram (Modality is not MG)",
    Reason.TOMOSYNTHESIS: "a tomosynthesis object; only 2D images are assessed",
    Reason.RETAKE_SUPERSEDED: "an earlier take of the same view; the latest retake is used",
    Reason.FOR_PROCESSING_SUPERSEDED: "a For Processing image of a view that has a For "
                                      "Presentation image, which is used",
    Reason.UNREADABLE: "the pixel data could not be read",
}


def sentence(reason: Reason, detail: str = "") -> str:
    """The reason's sentence, with ``detail`` (measured values, the header's words) added."""
    text = SENTENCES[reason]
    return f"{text} ({detail})" if detail else text


def note(reason: Reason, detail: str = "", *, laterality: str | None = None,
         view: str | None = None) -> str:
    """How a reason is stored beside an instance: ``"code@L-CC: detail"`` (the side and
    view part only where the header says either)."""
    where = f"@{laterality or '?'}-{view or '?'}" if laterality or view else ""
    return f"{reason.value}{where}: {detail}" if detail else f"{reason.value}{where}"


def parse_note(text: str) -> tuple[Reason | None, str | None, str | None, str]:
    """(reason, laterality, view, detail) of a stored :func:`note`; ``(None, None, None,
    text)`` for any other text."""
    head, _, detail = (text or "").partition(":")
    code, _, where = head.strip().partition("@")
    try:
        reason = Reason(code)
    except ValueError:
        return None, None, None, text or ""
    laterality, _, view = where.partition("-")
    return (reason, None if laterality in ("", "?") else laterality,
            None if view in ("", "?") else view, detail.strip())


__all__ = ["SENTENCES", "Reason", "note", "parse_note", "sentence"]
