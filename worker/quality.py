"""Confidence of a result: per-view input quality (from preprocessing) and the exam flag.

One home for the rule: a view is low-confidence when preprocessing flagged its input
(:func:`mammo_density.worker.preprocess.assess_quality`); an exam is low-confidence when
any view it used is, or when the model is unsure of the exam's class: the breast that
set it (the denser breast) gives that class less than :data:`MIN_TOP_PROBABILITY`. The
SR and ``classify`` say so; the class is still given.
"""

from __future__ import annotations

from mammo_density.result import StudyResult, ViewQuality
from mammo_density.worker.preprocess import PreprocessInfo

#: Below this exam probability of the chosen class the model is called uncertain.
MIN_TOP_PROBABILITY = 0.5


def view_quality(info: PreprocessInfo) -> ViewQuality:
    """The result's quality record of one view from what preprocessing measured."""
    return ViewQuality(
        low_confidence=bool(info.flags), flags=list(info.flags), notes=list(info.notes),
        breast_area_cm2=info.breast_area_cm2, breast_fraction=round(info.breast_fraction, 4),
        foreground_left_out=round(info.foreground_left_out, 4),
        breast_grey_levels=round(info.breast_levels, 1))


def exam_confidence(result: StudyResult) -> tuple[bool, list[str]]:
    """``(low_confidence, reasons)`` of a study result (see the module docstring)."""
    reasons = []
    for v in result.views:
        if v.quality is not None and v.quality.low_confidence:
            reasons.append(f"{v.laterality}-{v.view}: {', '.join(v.quality.flags)}")
    if result.assessable and result.exam is not None:
        category = result.exam.category
        # the breast that set the exam's class (the denser breast's rule), else the mean
        deciding = [(side, b.probabilities.get(category, 0.0))
                    for side, b in sorted(result.breasts.items()) if b.category == category]
        side, top = max(deciding, key=lambda item: item[1]) if deciding else \
            ("", result.exam.probabilities.get(category, 0.0))
        if top < MIN_TOP_PROBABILITY:
            where = f"{side} breast " if side else ""
            reasons.append(f"model uncertain ({where}class {category} at {top:.0%})")
    return bool(reasons), reasons


__all__ = ["MIN_TOP_PROBABILITY", "exam_confidence", "view_quality"]
