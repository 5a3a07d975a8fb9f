"""Baselines on synthetic studies: how far does mean brightness alone get?

The synthetic classes must be told apart by the *pattern and share* of fibroglandular
tissue, not by brightness. :func:`mean_intensity_baseline` measures the brightness cue: per
exam, the mean display value of the breast (background excluded) over the four standard
views, then a one-dimensional Gaussian classifier (shared variance, class priors, i.e. 1-D
LDA) fitted on one half of the exams and scored on the other half. Two variants of the
feature: raw (stored value / BitsStored maximum, MONOCHROME1 inverted) and windowed (the
file's VOI window applied first, as a viewer or a preprocessing step would).

For contrast, :func:`dense_share_feature` is a crude texture measure (share of breast
pixels brighter than the midpoint between the breast's 5th and 95th percentile); it shows
the class is recoverable from the pixels without using the labels' side channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mammo_density.synth.generate import CLASSES, StudyRecord
from mammo_density.synth.readback import display_image


def _breast(img: np.ndarray) -> np.ndarray:
    return img[img > 0]


def mean_feature(img: np.ndarray) -> float:
    """Mean display value of the breast (background excluded)."""
    vals = _breast(img)
    return float(vals.mean()) if vals.size else 0.0


def dense_share_feature(img: np.ndarray) -> float:
    """Share of breast pixels above the midpoint of its 5th-95th percentile range."""
    vals = _breast(img)
    if vals.size == 0:
        return 0.0
    lo, hi = np.percentile(vals, [5.0, 95.0])
    return float((vals > (lo + hi) / 2.0).mean())


def exam_features(records: Sequence[StudyRecord], feature: Callable[[np.ndarray], float],
                  apply_window: bool = False) -> np.ndarray:
    """Per exam, the feature averaged over its standard views."""
    out = []
    for rec in records:
        vals = [feature(display_image(im.path, apply_window)) for im in rec.standard_images()]
        out.append(float(np.mean(vals)) if vals else 0.0)
    return np.asarray(out)


@dataclass
class BaselineResult:
    name: str
    n_train: int
    n_test: int
    accuracy: float
    dense_accuracy: float  # A+B vs C+D
    majority_accuracy: float  # always predicting the most frequent training class

    def line(self) -> str:
        return (f"{self.name}: 4-class accuracy {100 * self.accuracy:.1f}% "
                f"(dense/non-dense {100 * self.dense_accuracy:.1f}%, majority class "
                f"{100 * self.majority_accuracy:.1f}%), train {self.n_train} / test "
                f"{self.n_test} exams")


def lda_1d(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """1-D Gaussian classifier with shared variance and class priors (labels 0-3)."""
    classes = np.unique(y_train)
    means = np.array([x_train[y_train == c].mean() for c in classes])
    resid = np.concatenate([x_train[y_train == c] - m for c, m in zip(classes, means, strict=True)])
    var = max(float(resid.var()), 1e-12)
    priors = np.array([(y_train == c).mean() for c in classes])
    scores = -((x_test[:, None] - means[None, :]) ** 2) / (2 * var) + np.log(priors)[None, :]
    return classes[np.argmax(scores, axis=1)]


def evaluate_feature(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> BaselineResult:
    """Fit :func:`lda_1d` on a random half of the exams, score on the other half."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    half = len(x) // 2
    tr, te = order[:half], order[half:]
    pred = lda_1d(x[tr], y[tr], x[te])
    majority = np.bincount(y[tr], minlength=4).argmax()
    return BaselineResult(
        name=name, n_train=len(tr), n_test=len(te),
        accuracy=float((pred == y[te]).mean()),
        dense_accuracy=float(((pred >= 2) == (y[te] >= 2)).mean()),
        majority_accuracy=float((y[te] == majority).mean()))


def exam_labels(records: Sequence[StudyRecord], reader: bool = False) -> np.ndarray:
    """Exam classes as 0-3 (true class by default, reader label with ``reader``)."""
    return np.array([CLASSES.index(r.reader_exam_density if reader else r.exam_density)
                     for r in records])


def mean_intensity_baseline(records: Sequence[StudyRecord], seed: int = 0
                            ) -> list[BaselineResult]:
    """Mean-brightness baselines (raw and windowed) and the dense-share texture measure."""
    y = exam_labels(records)
    return [
        evaluate_feature("mean intensity (raw)", exam_features(records, mean_feature), y, seed),
        evaluate_feature("mean intensity (windowed)",
                         exam_features(records, mean_feature, apply_window=True), y, seed),
        evaluate_feature("dense share (texture, for contrast)",
                         exam_features(records, dense_share_feature), y, seed),
    ]
