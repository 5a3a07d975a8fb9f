"""The method's rules for combining the per-view scores (METHOD.md, "Combining the four views").

- Exam probabilities: the mean of the available views' softmax scores.
- Per breast: the mean of that breast's (one or two) views; its class is the argmax.
- Exam class (BI-RADS): the denser of the two breasts' classes.
- Dense / non-dense: from a dense2 model set when one ran (mean of the views' P(dense),
  per breast the mean of its views; ``dense`` is ``p_dense >= 0.5``). Without one it is
  derived from the four-class result so that the two never contradict each other in a
  report: ``dense`` is "exam class is C or D", and ``p_dense`` is P(C) + P(D) of the
  breast that gave the exam its class (the denser breast; of two breasts with the same
  class, the higher). The mean of all four views could say "non-dense" beside an exam
  class C when one breast is C and the other B. ``dense_source`` says which source.

Tie rules (written down because they decide borderline exams):

- argmax ties between classes go to the DENSER class (higher letter): a screening
  programme would rather offer supplemental imaging than miss a dense breast, and it
  matches the exam rule "the denser breast wins";
- two breasts with the same class: that class; ``dense`` at exactly 0.5 is dense.

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
from mammo_density.views import SLOTS

DENSE_CLASSES = ("C", "D")
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


def denser_argmax(p: Sequence[float]) -> int:
    """Index of the largest value; ties go to the higher (denser) index."""
    arr = np.asarray(p, dtype=np.float64)
    best = float(arr.max())
    return int(np.flatnonzero(np.isclose(arr, best, rtol=0.0, atol=1e-12))[-1])


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

    dense_idx = [classes.index(c) for c in DENSE_CLASSES if c in classes]
    breasts: dict[str, BreastResult] = {}
    for side in ("R", "L"):
        slots = [s for s in SLOTS if s.startswith(side + "-") and s in probs]
        if not slots:
            continue
        mean = np.mean([probs[s] for s in slots], axis=0)
        p_dense = (float(np.mean([dense[s] for s in slots])) if use_dense2
                   else float(mean[dense_idx].sum()))
        breasts[side] = BreastResult(category=classes[denser_argmax(mean)],  # type: ignore[arg-type]
                                     probabilities=_as_dict(mean, classes), views=slots,
                                     p_dense=p_dense)
    exam_mean = np.mean(list(probs.values()), axis=0)
    category = max((b.category for b in breasts.values()), key=classes.index)
    if use_dense2:
        p_dense, source = float(np.mean([dense[s] for s in probs])), "dense2"
        dense_flag = p_dense >= 0.5
    else:
        p_dense = max(b.p_dense or 0.0 for b in breasts.values() if b.category == category)
        source, dense_flag = "birads4", category in DENSE_CLASSES
    exam = ExamResult(category=category, probabilities=_as_dict(exam_mean, classes),
                      dense=dense_flag, p_dense=p_dense, dense_source=source)
    return Combination(exam=exam, breasts=breasts, partial=bool(missing),
                       missing_views=missing)


__all__ = ["DENSE_CLASSES", "Combination", "combine", "denser_argmax"]
