"""The exam combination rule: from each breast's probabilities to the exam's class and
P(dense). Deployed by worker/combine.py (the result and the SR) and measured by
train/metrics.py (``evaluate``, the model card) through these same functions.

- A breast's class is the argmax of the mean of its views' probabilities; ties between
  classes go to the DENSER class (:func:`denser_argmax`): a screening programme would
  rather offer supplemental imaging than miss a dense breast, and it matches the exam rule.
- The exam's class is the denser of the breasts' classes (the method's rule).
- Four-class models: the exam's P(dense) is P(C) + P(D) of the breast that gave the exam
  its class (of two breasts with that class, the higher), so that "dense" (exam class C or
  D) and P(dense) never contradict each other in a report.
- Dense/non-dense models (dense2): P(dense) is the mean of the views' P(dense); dense when
  it is at least :data:`DENSE_THRESHOLD` (exactly 0.5 is dense).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: BI-RADS classes counted as dense.
DENSE_CLASSES: tuple[str, ...] = ("C", "D")
#: P(dense) from which a dense2 result is "dense".
DENSE_THRESHOLD = 0.5
#: Two probabilities closer than this are a tie.
TIE_TOLERANCE = 1e-12


def denser_argmax(p: Sequence[float]) -> int:
    """Index of the largest value; ties go to the higher (denser) index."""
    arr = np.asarray(p, dtype=np.float64)
    best = float(arr.max())
    return int(np.flatnonzero(np.isclose(arr, best, rtol=0.0, atol=TIE_TOLERANCE))[-1])


def dense_indices(classes: Sequence[str]) -> list[int]:
    return [list(classes).index(c) for c in DENSE_CLASSES if c in classes]


@dataclass(frozen=True)
class ExamDecision:
    """The rule's outcome: class indices into the class list, P(dense) per breast and exam."""

    category: int
    p_dense: float
    breast_categories: dict[str, int]
    breast_p_dense: dict[str, float]


def decide_birads4(breast_probs: Mapping[str, Sequence[float]],
                   classes: Sequence[str] = ("A", "B", "C", "D")) -> ExamDecision:
    """The exam of a four-class model from each breast's mean probabilities.

    Parameters
    ----------
    breast_probs
        Side (``"R"``, ``"L"``) -> the mean of that breast's views' probabilities.
    classes
        The class letters in the order of the probabilities.
    """
    if not breast_probs:
        raise ValueError("no breast to decide from")
    idx = dense_indices(classes)
    cats = {side: denser_argmax(p) for side, p in breast_probs.items()}
    pd = {side: float(np.asarray(p, dtype=np.float64)[idx].sum())
          for side, p in breast_probs.items()}
    category = max(cats.values())
    p_dense = max(pd[side] for side, c in cats.items() if c == category)
    return ExamDecision(category=category, p_dense=p_dense, breast_categories=cats,
                        breast_p_dense=pd)


def decide_dense2(view_p_dense: Sequence[float]) -> tuple[float, bool]:
    """(P(dense), dense) of a dense/non-dense model from its views' P(dense)."""
    if not len(view_p_dense):
        raise ValueError("no view to decide from")
    p = float(np.mean(np.asarray(view_p_dense, dtype=np.float64)))
    return p, p >= DENSE_THRESHOLD


__all__ = ["DENSE_CLASSES", "DENSE_THRESHOLD", "ExamDecision", "decide_birads4",
           "decide_dense2", "dense_indices", "denser_argmax"]
