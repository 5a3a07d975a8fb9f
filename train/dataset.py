"""PyTorch dataset over a manifest, through the ONE shared preprocessing.

Images go through :func:`mammo_density.worker.preprocess.load_model_input` exactly as at
inference (imported, never copied). Preprocessed arrays are cached as ``.npy`` files keyed
by (absolute path, file size, mtime, input size, ``PREPROCESSING_VERSION``), so epochs
after the first read small arrays instead of decoding DICOM again, and a change of the
preprocessing invalidates the cache by itself. Prepared inputs
(:mod:`mammo_density.train.prepared`) are read in place, after a check of their size and
preprocessing version.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mammo_density.train.data import ImageRecord

log = logging.getLogger(__name__)


def preprocessing():
    """The shared preprocessing module (import deferred: torch users need not load it)."""
    from mammo_density.worker import preprocess

    return preprocess


class ArrayCache:
    """Preprocessed model inputs on disk, one ``.npy`` per (image, size, version)."""

    def __init__(self, root: Path | None, size: int, *, memory: bool = True) -> None:
        self.root = Path(root) if root else None
        self.size = size
        self._memory: dict[str, np.ndarray] | None = {} if memory else None
        self.version = str(preprocessing().PREPROCESSING_VERSION)
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path) -> str:
        st = Path(path).stat()
        text = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.size}|{self.version}"
        return hashlib.sha1(text.encode()).hexdigest()

    def load(self, path: Path) -> np.ndarray:
        """The model input of ``path`` (float32, (size, size), [0, 1]); read-only array."""
        if self._memory is not None:
            hit = self._memory.get(str(path))
            if hit is None:
                hit = self._memory[str(path)] = self._load(path)
                hit.setflags(write=False)
            return hit
        return self._load(path)

    def _load(self, path: Path) -> np.ndarray:
        from mammo_density.train import prepared

        if prepared.descriptor_of(path) is not None:
            # already the model input (checked against this size and version): no disk copy
            return prepared.load_prepared(Path(path), self.size, self.version)
        if self.root is None:
            return self._compute(path)
        target = self.root / f"{self.key(path)}.npy"
        if target.exists():
            try:
                arr = np.load(target)
                if arr.shape == (self.size, self.size):
                    return arr
            except (OSError, ValueError):
                log.warning("unreadable cache file %s; recomputing", target.name)
        arr = self._compute(path)
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, target)
        return arr

    def _compute(self, path: Path) -> np.ndarray:
        arr = preprocessing().load_model_input(Path(path), self.size)
        return np.ascontiguousarray(arr, dtype=np.float32)


def warm_cache(records: Sequence[ImageRecord], cache: ArrayCache, *,
               progress: bool = True) -> None:
    """Preprocess every image once (tqdm progress), so training epochs are cheap."""
    from tqdm import tqdm

    for r in tqdm(records, desc=f"preprocess {cache.size}px", disable=not progress,
                  leave=False):
        cache.load(r.path)


def compute_normalisation(records: Sequence[ImageRecord], cache: ArrayCache,
                          max_images: int = 2000) -> tuple[float, float]:
    """Mean and std of all pixels of (up to ``max_images``) training images."""
    if not records:
        raise ValueError("no training images to compute the normalisation from")
    step = max(1, len(records) // max_images)
    total = total_sq = 0.0
    count = 0
    for r in records[::step]:
        a = cache.load(r.path).astype(np.float64)
        total += a.sum()
        total_sq += (a * a).sum()
        count += a.size
    mean = total / count
    std = max(float(np.sqrt(max(total_sq / count - mean * mean, 0.0))), 1e-6)
    return float(mean), std


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, bilinear, background (0) outside."""
    return affine(image, degrees=degrees)


def affine(image: np.ndarray, *, degrees: float = 0.0, scale: float = 1.0,
           shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotate by ``degrees`` and zoom by ``scale`` about the centre, then shift by ``shift``
    (x, y) pixels; bilinear, background (0) outside. Never mirrors."""
    if degrees == 0 and scale == 1.0 and shift == (0.0, 0.0):
        return image
    h, w = image.shape
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), degrees, scale)
    m[0, 2] += shift[0]
    m[1, 2] += shift[1]
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def intensity(image: np.ndarray, *, gamma: float = 1.0, contrast: float = 1.0) -> np.ndarray:
    """Gamma and contrast on the breast's pixels (> 0); the background stays 0.

    ``gamma`` bends the [0, 1] intensities (``x ** gamma``); ``contrast`` scales them about
    the breast's mean; results are clipped to [0, 1].
    """
    if gamma == 1.0 and contrast == 1.0:
        return image
    breast = image > 0
    if not breast.any():
        return image
    out = image.astype(np.float32, copy=True)
    vals = np.clip(out[breast], 0.0, 1.0) ** gamma
    if contrast != 1.0:
        mean = float(vals.mean())
        vals = np.clip((vals - mean) * contrast + mean, 1e-4, 1.0)
    out[breast] = vals
    return out


def breast_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size`` patch of ``image`` centred on a random breast pixel (> 0), moved
    inside the image; anywhere when the image has no breast pixel."""
    h, w = image.shape
    ys, xs = np.nonzero(image[::4, ::4] > 0)
    if len(ys):
        i = int(rng.integers(len(ys)))
        cy, cx = int(ys[i]) * 4, int(xs[i]) * 4
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top = min(max(cy - size // 2, 0), h - size)
    left = min(max(cx - size // 2, 0), w - size)
    return np.ascontiguousarray(image[top:top + size, left:left + size])


@dataclass(frozen=True)
class Augment:
    """Random training augmentation of a preprocessed mammogram (no left/right flip: the
    preprocessing has already put every chest wall on the left)."""

    rotation: float = 0.0  # max |degrees|
    scale: float = 0.0  # zoom in [1 - scale, 1 + scale]
    translate: float = 0.0  # shift up to this share of the side, in x and y
    gamma: float = 0.0  # gamma in [1 / (1 + gamma), 1 + gamma], log-uniform
    contrast: float = 0.0  # factor in [1 - contrast, 1 + contrast]

    @property
    def active(self) -> bool:
        return any(v > 0 for v in (self.rotation, self.scale, self.translate, self.gamma,
                                   self.contrast))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        side = image.shape[0]
        deg = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation > 0 else 0.0
        zoom = float(rng.uniform(1 - self.scale, 1 + self.scale)) if self.scale > 0 else 1.0
        if self.translate > 0:
            dx, dy = (float(v) for v in rng.uniform(-self.translate, self.translate, 2) * side)
        else:
            dx = dy = 0.0
        image = affine(image, degrees=deg, scale=zoom, shift=(dx, dy))
        g = 1.0
        if self.gamma > 0:
            g = float(np.exp(rng.uniform(-np.log1p(self.gamma), np.log1p(self.gamma))))
        c = float(rng.uniform(1 - self.contrast, 1 + self.contrast)) if self.contrast > 0 else 1.0
        return intensity(image, gamma=g, contrast=c)


class DensityDataset(Dataset):
    """(image tensor (1, S, S) normalised, target class probabilities, index).

    Parameters
    ----------
    records
        The images (usually one view slot and one split).
    cache
        Where preprocessed arrays live.
    task
        ``birads4`` or ``dense2``.
    mean, std
        Normalisation ``(x - mean) / std`` (recorded in the registry manifest).
    rotation
        Maximum absolute random rotation in degrees (0 for evaluation).
    augment
        Full random augmentation (:class:`Augment`); replaces ``rotation`` when given.
    soft_labels
        Targets are the readers' label distribution instead of one-hot.
    seed
        Base seed of the augmentation (combined with the epoch and index, so runs repeat).
    crop
        Train on a random ``crop x crop`` patch of each (augmented) image, centred on a
        breast pixel (:func:`breast_crop`); 0 = the whole image. The network ends in a
        global average pool, so it is evaluated and deployed on whole images.
    """

    def __init__(self, records: Sequence[ImageRecord], cache: ArrayCache, *,
                 task: str = "birads4", mean: float = 0.0, std: float = 1.0,
                 rotation: float = 0.0, soft_labels: bool = False, seed: int = 0,
                 augment: Augment | None = None, crop: int = 0) -> None:
        self.crop = int(crop)
        self.records = list(records)
        self.cache = cache
        self.task = task
        self.mean, self.std = float(mean), float(std)
        self.rotation = float(rotation)
        self.augment = augment
        self.soft_labels = soft_labels
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def targets(self) -> list[int]:
        return [r.target(self.task) for r in self.records]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        r = self.records[index]
        img = self.cache.load(r.path)
        if self.augment is not None and self.augment.active:
            img = self.augment(img, np.random.default_rng((self.seed, self.epoch, index)))
        elif self.rotation > 0:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            img = rotate(img, float(rng.uniform(-self.rotation, self.rotation)))
        if 0 < self.crop < img.shape[0]:
            img = breast_crop(img, self.crop,
                              np.random.default_rng((self.seed, self.epoch, index, 1)))
        x = torch.from_numpy((img - self.mean) / self.std).float().unsqueeze(0)
        if self.soft_labels:
            y = torch.from_numpy(r.soft_target(self.task))
        else:
            y = torch.zeros(len(_classes(self.task)))
            y[r.target(self.task)] = 1.0
        return x, y, index


def _classes(task: str) -> tuple[str, ...]:
    from mammo_density.train.data import TASKS

    return TASKS[task]
