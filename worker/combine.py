"""The per-view scores of a study -> its result objects (exam, breasts, partial).

The exam rule itself (the denser breast, ties to the denser class, P(dense) of the
winning breast, dense2 threshold) is :mod:`mammo_density.study.exam`, which
``evaluate`` (train/metrics.py) measures with the same functions. Here:

- Exam probabilities: the mean of the available views' softmax scores (for display).
- Per breast: the mean of that breast's (one or two) views.
- Dense / non-dense: from a dense2 model set when one ran for every view, else derived
  from the four-class result so that the two never contradict each other in a report;
  ``dense_source`` says which.

Missing views: whatever is there is used and the result is marked partial with the
missing slots listed; a breast with no view is absent from ``breasts``; with no view at
all the study is not assessable (``exam`` is None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mammo_density.result import BIRADS, BreastResult, ExamResult
from mammo_density.study.exam import (
    DENSE_CLASSES,
    decide_birads4,
    decide_dense2,
    denser_argmax,
)
from mammo_density.study.slots import SIDES, SLOTS, slots_of_side

PROB_SUM_TOLERANCE = 1e-3


@dataclass
class Combination:
    """What the rules give for one study."""

    exam: ExamResult | None
    breasts: dict[str, BreastResult] = field(default_factory=dict)
    partial: bool = False
    missing_views: list[str] = field(default_factory=list)

    @property
    def assessable(self) -> bool:
        return self.exam is not None


def _check_probs(slot: str, probs: Sequence[float], n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.shape != (n,):
        raise ValueError(f"probabilities of {slot}: expected {n} values, got {p.shape[0]}")
    if not np.all(np.isfinite(p)) or np.any(p < -1e-9):
        raise ValueError(f"probabilities of {slot} are not finite and non-negative: {p}")
    total = float(p.sum())
    if abs(total - 1.0) > PROB_SUM_TOLERANCE:
        raise ValueError(f"probabilities of {slot} sum to {total:.4f}, not 1")
    return np.clip(p, 0.0, None) / total


def _as_dict(p: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    return {c: float(v) for c, v in zip(classes, p, strict=True)}


def combine(view_probs: Mapping[str, Sequence[float]], *,
            dense_probs: Mapping[str, float] | None = None,
            classes: Sequence[str] = BIRADS,
            expected_slots: Sequence[str] = SLOTS) -> Combination:
    """Apply the method's rules.

    Parameters
    ----------
    view_probs
        Slot (``"R-CC"``, ...) -> BI-RADS probabilities (A..D, summing to 1).
    dense_probs
        Slot -> P(dense) from a dense2 model set, when one ran.
    classes
        The class letters, in the order of the probability vectors.
    expected_slots
        Slots of a complete study; the others missing make the study partial.

    Raises
    ------
    ValueError
        Unknown slot, wrong number of probabilities, or probabilities not summing to 1.
    """
    classes = tuple(classes)
    unknown = set(view_probs) - set(SLOTS)
    if unknown:
        raise ValueError(f"unknown view slots: {sorted(unknown)}")
    probs = {slot: _check_probs(slot, p, len(classes))
             for slot, p in view_probs.items()}
    dense = dict(dense_probs or {})
    for slot, p in dense.items():
        if slot not in probs:
            raise ValueError(f"P(dense) given for {slot}, which has no BI-RADS scores")
        if not (0.0 <= float(p) <= 1.0) or math.isnan(float(p)):
            raise ValueError(f"P(dense) of {slot} is not a probability: {p}")
    use_dense2 = bool(dense) and set(dense) == set(probs)
    missing = [s for s in expected_slots if s not in probs]
    if not probs:
        return Combination(exam=None, breasts={}, partial=True, missing_views=missing)

    means: dict[str, np.ndarray] = {}
    side_slots: dict[str, list[str]] = {}
    for side in SIDES:
        slots = [s for s in slots_of_side(side) if s in probs]
        if slots:
            side_slots[side] = slots
            means[side] = np.mean([probs[s] for s in slots], axis=0)
    decision = decide_birads4(means, classes)
    breasts: dict[str, BreastResult] = {}
    for side, mean in means.items():
        p_dense = (decide_dense2([dense[s] for s in side_slots[side]])[0] if use_dense2
                   else decision.breast_p_dense[side])
        breasts[side] = BreastResult(
            category=classes[decision.breast_categories[side]],  # type: ignore[arg-type]
            probabilities=_as_dict(mean, classes), views=side_slots[side], p_dense=p_dense)
    exam_mean = np.mean(list(probs.values()), axis=0)
    category = classes[decision.category]
    if use_dense2:
        p_dense, dense_flag = decide_dense2([dense[s] for s in probs])
        source = "dense2"
    else:
        p_dense, source, dense_flag = decision.p_dense, "birads4", category in DENSE_CLASSES
    exam = ExamResult(category=category,  # type: ignore[arg-type]
                      probabilities=_as_dict(exam_mean, classes), dense=dense_flag,
                      p_dense=p_dense, dense_source=source)
    return Combination(exam=exam, breasts=breasts, partial=bool(missing),
                       missing_views=missing)


__all__ = ["DENSE_CLASSES", "Combination", "combine", "denser_argmax"]
