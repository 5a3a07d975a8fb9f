"""Screening rules: recommendations a screening programme wants next to the density.

Rules are chosen with ``settings.screening_rules`` (default: all built-in ones). An entry
is a built-in name or ``module:callable``; a callable takes ``(result, settings)`` and
returns a :class:`~mammo_density.result.Recommendation`, a list of them, or ``None``.
A rule that fails is logged and skipped; it never fails the study.

Built-in rules
--------------
``dense``
    Exam class in ``settings.dense_categories`` (default C, D) -> "consider supplemental
    imaging" (warning). Dense tissue masks cancers and is a risk factor (docs/method.md).
``dose_reference``
    Any exposure whose average glandular dose (AGD) exceeds the reference level for its
    compressed thickness -> "dose above reference" (warning).
``partial``
    A partial study (views missing) or one that could not be assessed -> info.

Dose reference by thickness
---------------------------
``settings.dose_reference_mgy`` is the per-exposure reference at 45 mm compressed breast
thickness. Other thicknesses scale it with the shape of the acceptable AGD levels of the
European guidelines (European guidelines for quality assurance in breast cancer screening
and diagnosis, 4th ed., European Commission 2006, section 2a.2.5.1 and table 2a.2; the
EUREF limiting values), given there per PMMA phantom thickness with the equivalent breast
thickness:

=========  ===============  ==============  ===============
PMMA (mm)  breast (mm)      acceptable mGy  achievable mGy
=========  ===============  ==============  ===============
20         21               1.0             0.6
30         32               1.5             1.0
40         45               2.0             1.6
45         53               2.5             2.0
50         60               3.0             2.4
60         75               4.5             3.6
70         90               6.5             5.1
=========  ===============  ==============  ===============

``reference(t) = dose_reference_mgy * acceptable(t) / acceptable(45 mm)``, linear in
between, held constant outside 21-90 mm. With ``dose_reference_mgy = 2.0`` the rule flags
exactly the EUREF acceptable levels; the default 2.5 mGy allows 25 % above them (the
EUREF levels are for 2D; tomosynthesis exposures run higher). The table was taken from
the guideline text; the `search` tool of this project did not return the primary source,
so check it against your national protocol before clinical use.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

from mammo_density.logsetup import uid_hash
from mammo_density.result import Recommendation, StudyResult

log = logging.getLogger(__name__)

#: (equivalent breast thickness mm, EUREF acceptable AGD mGy), European guidelines 2006.
EUREF_ACCEPTABLE: tuple[tuple[float, float], ...] = (
    (21.0, 1.0), (32.0, 1.5), (45.0, 2.0), (53.0, 2.5), (60.0, 3.0), (75.0, 4.5), (90.0, 6.5),
)
REFERENCE_THICKNESS_MM = 45.0

_CLASS_TEXT = {"A": "almost entirely fatty", "B": "scattered fibroglandular density",
               "C": "heterogeneously dense", "D": "extremely dense"}

Rule = Callable[[StudyResult, Any], "Recommendation | list[Recommendation] | None"]


def _interp(thickness_mm: float) -> float:
    points = EUREF_ACCEPTABLE
    if thickness_mm <= points[0][0]:
        return points[0][1]
    if thickness_mm >= points[-1][0]:
        return points[-1][1]
    for (t0, d0), (t1, d1) in pairwise(points):
        if t0 <= thickness_mm <= t1:
            return d0 + (d1 - d0) * (thickness_mm - t0) / (t1 - t0)
    raise AssertionError("unreachable")


def reference_agd_mgy(thickness_mm: float, reference_at_45_mm: float) -> float:
    """AGD reference level (mGy per exposure) for a compressed thickness (mm)."""
    return reference_at_45_mm * _interp(thickness_mm) / _interp(REFERENCE_THICKNESS_MM)


def rule_dense(result: StudyResult, settings: Any) -> Recommendation | None:
    """Dense breasts -> consider supplemental imaging."""
    if result.exam is None:
        return None
    categories = {c.strip().upper() for c in getattr(settings, "dense_categories", ["C", "D"])}
    if result.exam.category not in categories:
        return None
    sides = ", ".join(f"{'right' if s == 'R' else 'left'} {b.category}"
                      for s, b in sorted(result.breasts.items(), reverse=True))
    text = (f"Breast density {result.exam.category} ({_CLASS_TEXT[result.exam.category]}"
            + (f"; {sides}" if sides else "") + "): consider supplemental imaging "
            "according to the programme's policy for dense breasts.")
    return Recommendation(rule="dense", text=text, severity="warning")


def rule_dose_reference(result: StudyResult, settings: Any) -> list[Recommendation]:
    """Exposures whose AGD exceeds the reference for their compressed thickness."""
    dose = result.dose
    if dose is None:
        return []
    level = float(getattr(settings, "dose_reference_mgy", 2.5))
    out: list[Recommendation] = []
    for v in dose.views:
        if v.agd_mgy is None or v.thickness_mm is None or v.thickness_mm <= 0:
            continue
        ref = reference_agd_mgy(v.thickness_mm, level)
        if v.agd_mgy > ref:
            name = f"{v.laterality or '?'}-{v.view or '?'}"
            out.append(Recommendation(
                rule="dose_reference", severity="warning",
                text=(f"Dose above reference: {name} AGD {v.agd_mgy:.2f} mGy at "
                      f"{v.thickness_mm:.0f} mm compressed thickness (reference "
                      f"{ref:.2f} mGy)."),
            ))
    return out


def rule_partial(result: StudyResult, settings: Any) -> Recommendation | None:
    """Partial or non-assessable study -> info."""
    if not result.assessable:
        return Recommendation(rule="partial", severity="info",
                              text="Study not assessable for breast density"
                              + (": " + "; ".join(result.warnings) if result.warnings else "."))
    if result.partial:
        missing = ", ".join(result.missing_views) or "some views"
        return Recommendation(rule="partial", severity="info",
                              text=f"Partial study: {missing} missing; density from the "
                              "views available.")
    return None


BUILTIN_RULES: dict[str, Rule] = {
    "dense": rule_dense,
    "dose_reference": rule_dose_reference,
    "partial": rule_partial,
}


def resolve_rule(name: str) -> Rule:
    """A built-in rule by name, or a ``module:callable``."""
    if name in BUILTIN_RULES:
        return BUILTIN_RULES[name]
    if ":" not in name:
        raise ValueError(f"unknown screening rule {name!r} (built-in: "
                         f"{', '.join(BUILTIN_RULES)}; or module:callable)")
    module_name, _, attr = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"screening rule {name!r} is not callable")
    return obj


def _as_list(value: Any) -> Iterable[Recommendation]:
    if value is None:
        return []
    if isinstance(value, Recommendation):
        return [value]
    return [v if isinstance(v, Recommendation) else Recommendation.model_validate(v)
            for v in value]


def evaluate(result: StudyResult, settings: Any) -> list[Recommendation]:
    """Recommendations of every configured rule, in rule order; never raises."""
    names = getattr(settings, "screening_rules", None)
    if names is None:
        names = list(BUILTIN_RULES)
    out: list[Recommendation] = []
    for name in names:
        try:
            out.extend(_as_list(resolve_rule(name)(result, settings)))
        except Exception:
            log.exception("screening rule %s failed for study %s", name,
                          uid_hash(result.study_instance_uid))
    return out


__all__ = ["BUILTIN_RULES", "EUREF_ACCEPTABLE", "evaluate", "reference_agd_mgy",
           "resolve_rule"]
