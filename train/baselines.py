"""Baselines scored on the same folds as the networks: majority class, hand-made features
with a logistic regression (scikit-learn).

Features are computed on the model input of the ONE shared preprocessing (breast cropped,
chest wall left, ``size`` px, [0, 1]) over the breast's pixels (> 0): an intensity
histogram and percentiles, moments, the share of bright tissue at several thresholds, the
breast's area, and texture (local standard deviation, gradient magnitude and Laplacian
statistics at two scales). The regularisation of the logistic regression is chosen on the
fold's validation patients (the same ones the networks use), then it is refitted on
training + validation.

A linear probe of weights a site brings (:func:`embeddings_logistic`): the same
regression on a pretrained network's pooled features, the network frozen. It tells
whether those features carry density before any fine-tuning is tried.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mammo_density.train.data import TASKS, ImageRecord, cohen_kappa
from mammo_density.train.dataset import ArrayCache
from mammo_density.train.metrics import Prediction

HIST_BINS = 24
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _stats(v: np.ndarray) -> list[float]:
    if v.size == 0:
        return [0.0] * 5
    m, s = float(v.mean()), float(v.std())
    z = (v - m) / (s + 1e-6)
    return [m, s, float((z ** 3).mean()), float((z ** 4).mean()), float(np.percentile(v, 90))]


def image_features(img: np.ndarray) -> np.ndarray:
    """Histogram / texture features of one preprocessed image (float32 [0, 1], square)."""
    import cv2

    img = np.asarray(img, dtype=np.float32)
    mask = img > 0
    v = img[mask]
    feats: list[float] = []
    if v.size:
        hist, _ = np.histogram(v, bins=HIST_BINS, range=(0.0, 1.0))
        feats += list(hist / v.size)
        feats += [float(x) for x in np.percentile(v, PERCENTILES)]
        feats += _stats(v)
        feats += [float((v > t).mean()) for t in THRESHOLDS]
    else:
        feats += [0.0] * (HIST_BINS + len(PERCENTILES) + 5 + len(THRESHOLDS))
    feats.append(float(mask.mean()))
    for k in (3, 9):
        mean = cv2.blur(img, (k, k))
        sq = cv2.blur(img * img, (k, k))
        local_std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
        inner = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
        feats += _stats(local_std[inner])
        small = cv2.resize(img, None, fx=1 / k * 3, fy=1 / k * 3,
                           interpolation=cv2.INTER_AREA) if k > 3 else img
        gx = cv2.Sobel(small, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(small, cv2.CV_32F, 0, 1)
        smask = cv2.resize(inner.astype(np.uint8), (small.shape[1], small.shape[0]),
                           interpolation=cv2.INTER_NEAREST) > 0
        feats += _stats(np.hypot(gx, gy)[smask])
        feats += _stats(np.abs(cv2.Laplacian(small, cv2.CV_32F))[smask])
    return np.asarray(feats, dtype=np.float64)


def _features_at(job: tuple[str, str | None, int]) -> np.ndarray:
    path, root, size = job
    return image_features(ArrayCache(Path(root) if root else None, size, memory=False)
                          .load(Path(path)))


def _features_of(paths: Sequence[str], cache: ArrayCache) -> list[np.ndarray]:
    """Feature vectors of ``paths``, on every core when there are many (a 650 px image
    takes about 0.3 s on one core)."""
    workers = min(os.cpu_count() or 1, len(paths) // 16)
    if workers < 2:
        return [image_features(cache.load(Path(p))) for p in paths]
    import multiprocessing as mp

    root = str(cache.root) if cache.root else None
    # spawn: the caller may hold torch's thread pools, which a fork would copy half-made
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_features_at, [(p, root, cache.size) for p in paths],
                             chunksize=8))


def feature_matrix(records: Sequence[ImageRecord], cache: ArrayCache) -> np.ndarray:
    return np.stack([image_features(cache.load(r.path)) for r in records])


def _to_preds(records: Sequence[ImageRecord], probs: np.ndarray) -> list[Prediction]:
    return [Prediction(exam_id=r.exam_id, laterality=r.laterality, view=r.view,
                       probs=np.asarray(p, dtype=np.float64), density=r.density)
            for r, p in zip(records, probs, strict=True) if r.density]


def majority_class(train: Sequence[ImageRecord], test: Sequence[ImageRecord],
                   task: str = "birads4") -> list[Prediction]:
    """Every test image gets the most frequent training class (probability 1)."""
    n = len(TASKS[task])
    counts = np.bincount([r.target(task) for r in train], minlength=n)
    probs = np.zeros((len(test), n))
    probs[:, int(np.argmax(counts))] = 1.0
    return _to_preds(test, probs)


def features_logistic(train: Sequence[ImageRecord], val: Sequence[ImageRecord],
                      test: Sequence[ImageRecord], cache: ArrayCache, *,
                      task: str = "birads4", features: dict | None = None,
                      featurize: Callable[[list[str]], list[np.ndarray]] | None = None,
                      ) -> tuple[list[Prediction], dict]:
    """Standardised features + multinomial logistic regression; C chosen on ``val``.

    ``features`` caches feature vectors by path across folds. ``featurize`` maps image
    paths to feature vectors (default: the hand-made features above). Returns the test
    predictions and ``{"C": chosen, "val_kappa": ...}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(TASKS[task])
    features = {} if features is None else features

    def matrix(recs: Sequence[ImageRecord]) -> np.ndarray:
        missing = list(dict.fromkeys(str(r.path) for r in recs if str(r.path) not in features))
        features.update(zip(missing, featurize(missing) if featurize
                            else _features_of(missing, cache), strict=True))
        return np.stack([features[str(r.path)] for r in recs])

    def fit(x: np.ndarray, y: np.ndarray, c: float):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x, y)

    def full_probs(model, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), n))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    x_tr, y_tr = matrix(train), np.array([r.target(task) for r in train])
    best_c, best_k = C_GRID[0], -np.inf
    if val:
        x_va, y_va = matrix(val), np.array([r.target(task) for r in val])
        for c in C_GRID:
            p = full_probs(fit(x_tr, y_tr, c), x_va)
            k = cohen_kappa(y_va, p.argmax(1), n, weights="linear")
            if k > best_k:
                best_c, best_k = c, k
        x_tr, y_tr = np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va])
    else:
        best_c = 1.0
    model = fit(x_tr, y_tr, best_c)
    return _to_preds(test, full_probs(model, matrix(test))), {"C": best_c,
                                                              "val_kappa": float(best_k)}


def embeddings_logistic(train: Sequence[ImageRecord], val: Sequence[ImageRecord],
                        test: Sequence[ImageRecord], cache: ArrayCache, *,
                        weights: str | Path, arch: str = "mobilenet_v2",
                        task: str = "birads4", batch_size: int = 16
                        ) -> tuple[list[Prediction], dict]:
    """Linear probe: the pooled features of network ``arch`` with ``weights`` loaded as
    ``--init-from`` loads them (ImageNet, a foundation model, an earlier run), frozen,
    + the logistic regression of :func:`features_logistic` (C chosen on ``val``).

    Inputs are normalised with the training images' pixel mean and std, as training
    does. The features are the input of the network's last linear layer (global average
    pool of its last feature map). Raises ``ValueError`` when the weights do not fit
    ``arch``.
    """
    import torch

    from mammo_density.train.dataset import compute_normalisation
    from mammo_density.train.model import build_network, load_init_weights

    net = build_network(arch, num_classes=len(TASKS[task]))
    counts = load_init_weights(net, weights)
    net.eval()
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise ValueError(f"{arch}: no linear classifier whose input could be probed")
    mean, std = compute_normalisation(list(train), cache)
    taken: list[torch.Tensor] = []
    dims: set[int] = set()
    hook = linear[-1].register_forward_hook(lambda _m, inp, _out: taken.append(inp[0]))

    def featurize(paths: list[str]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(paths), batch_size):
                batch = np.stack([cache.load(Path(p)) for p in paths[i:i + batch_size]])
                taken.clear()
                net(torch.from_numpy((batch - mean) / std).float().unsqueeze(1))
                out.extend(taken[-1].double().numpy())
        dims.update(len(v) for v in out)
        return out

    try:
        preds, info = features_logistic(train, val, test, cache, task=task, features={},
                                        featurize=featurize)
    finally:
        hook.remove()
    return preds, {**info, "arch": arch, "weights": str(weights),
                   "tensors_loaded": counts["loaded"], "dims": sorted(dims)}
