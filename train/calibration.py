"""Calibration: temperature scaling fitted on validation images, expected calibration error.

Temperature scaling divides the logits by one scalar ``T`` chosen to minimise the
validation negative log-likelihood; it changes the confidence of the probabilities, never
their order (the predicted class stays the same). The expected calibration error (ECE) is
the image-weighted mean |accuracy - confidence| over equal-width confidence bins.
"""

from __future__ import annotations

import itertools

import numpy as np


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray,
                               n_bins: int = 10) -> float:
    """ECE of top-class confidences in ``n_bins`` equal-width bins over (0, 1]."""
    probs = np.asarray(probs, dtype=float)
    targets = np.asarray(targets, dtype=int)
    if probs.ndim != 2 or len(probs) != len(targets) or not len(targets):
        raise ValueError("expected (n, classes) probabilities and n targets, n > 0")
    conf = probs.max(1)
    correct = (probs.argmax(1) == targets).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities recomputed as softmax(log p / T) (= softmax(logits / T))."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
    return _softmax(logp / float(temperature))


def fit_temperature(probs: np.ndarray, targets: np.ndarray, *,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of ``targets``.

    Works from probabilities (log p differs from the logits by a per-row constant, which
    the softmax ignores). A golden-section search on log T: the NLL is unimodal in T.
    """
    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
    t_idx = np.asarray(targets, dtype=int)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float(np.mean(lse - z[np.arange(len(z)), t_idx]))

    a, b = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(80):
        if nll(c) < nll(d):
            b = d
        else:
            a = c
        c, d = b - ratio * (b - a), a + ratio * (b - a)
    return float(np.exp((a + b) / 2))
