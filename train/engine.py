"""One epoch of training, one pass of evaluation (torchvision references' shape)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mammo_density.train.distributed import all_gather_object, all_reduce_sum


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy against class-probability targets (one-hot or soft)."""
    return nn.functional.cross_entropy(logits, target)


class DensityLoss(nn.Module):
    """Cross-entropy against class-probability targets, optionally class-weighted and
    ordinal-aware.

    ``ordinal_weight`` > 0 adds the squared distance between the predicted and the target
    cumulative distributions (the squared earth mover's distance over ordered classes):
    predicting D for an A costs more than predicting B. The network still outputs one
    logit per class, so inference and export are unchanged. ``class_weights`` (one per
    class) weight each image by its target class (inverse class frequency = "balanced").
    """

    def __init__(self, *, class_weights: torch.Tensor | None = None,
                 ordinal_weight: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights.float() if class_weights
                             is not None else None)
        self.ordinal_weight = float(ordinal_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=1)
        per = -(target * logp).sum(1)
        if self.ordinal_weight > 0:
            cdf_p = torch.cumsum(logp.exp(), dim=1)[:, :-1]
            cdf_t = torch.cumsum(target, dim=1)[:, :-1]
            per = per + self.ordinal_weight * ((cdf_p - cdf_t) ** 2).sum(1)
        if self.class_weights is None:
            return per.mean()
        w = (target * self.class_weights).sum(1)
        return (w * per).sum() / w.sum().clamp_min(1e-12)


def balanced_class_weights(targets: list[int], n_classes: int) -> torch.Tensor:
    """Inverse class frequencies scaled to mean 1 over the images (absent classes: 0)."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(float)
    w = np.where(counts > 0, len(targets) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def make_loss(kind: str = "ce", *, class_weights: torch.Tensor | None = None) -> nn.Module:
    """``ce`` or ``ordinal`` (cross-entropy + squared cumulative distance)."""
    if kind not in ("ce", "ordinal"):
        raise ValueError(f"unknown loss {kind!r}")
    return DensityLoss(class_weights=class_weights,
                       ordinal_weight=1.0 if kind == "ordinal" else 0.0)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if amp and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scaler: torch.amp.GradScaler | None = None,
                    amp: bool = False, channels_last: bool = False,
                    progress: bool = False, desc: str = "train",
                    max_steps: int | None = None,
                    loss_fn: nn.Module | None = None,
                    freeze_bn: bool = False) -> EpochStats:
    """Train for one pass over ``loader``; loss/accuracy summed over all processes.

    ``freeze_bn``: batch normalisation keeps the statistics it came with (eval mode) while
    the rest trains (:func:`freeze_batchnorm`)."""
    import time

    from tqdm import tqdm

    model.train()
    if freeze_bn:
        freeze_batchnorm(model)
    t0 = time.perf_counter()
    loss_sum = correct = count = 0.0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for step, (x, y, _) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
            loss = (loss_fn(logits.float(), y) if loss_fn is not None
                    else soft_cross_entropy(logits.float(), y))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = x.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += float((logits.argmax(1) == y.argmax(1)).sum())
        count += n
        bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    return EpochStats(loss_sum / max(count, 1), correct / max(count, 1), int(count),
                      time.perf_counter() - t0)


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm of ``model`` in eval mode: it normalises with its running
    statistics and does not update them (its scale and shift still train). For fine-tuning
    from weights a site brings on batches of a few images, whose statistics are noisy,
    and for weights whose normalisation was folded into the convolutions (identity
    statistics), whose folded scales training-mode statistics would undo. Call after
    ``model.train()``; returns the number of layers frozen."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
    return len(bns)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device, *,
                          channels_last: bool = False) -> int:
    """Recompute every BatchNorm's running mean / variance from ``loader`` (the average
    of its batches' statistics, weights unchanged); returns the number of images used.

    On a small set trained with a high learning rate the running statistics lag behind the
    weights, and eval-mode outputs collapse onto one class; recomputing them before each
    validation ("precise BN") makes validation, model selection and the saved weights
    agree with what the network learnt.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    count = 0
    for x, _, _ in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
        count += x.shape[0]
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.train(was_training)
    return count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *,
             amp: bool = False, channels_last: bool = False, progress: bool = False,
             desc: str = "val") -> tuple[EpochStats, np.ndarray, np.ndarray]:
    """Loss and accuracy; also softmax probabilities and dataset indices of every image.

    Under DDP each process evaluates its shard; statistics are summed and the
    probabilities gathered, so every process returns the whole set (a
    ``DistributedSampler`` pads the last shard with repeats: those are dropped by index).
    """
    import time

    from tqdm import tqdm

    model.eval()
    t0 = time.perf_counter()
    loss_sum = correct = count = 0.0
    probs: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    for x, y, idx in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss = soft_cross_entropy(logits, y)
        n = x.shape[0]
        loss_sum += float(loss) * n
        correct += float((logits.argmax(1) == y.argmax(1)).sum())
        count += n
        probs.append(torch.softmax(logits, 1).cpu().numpy())
        indices.append(idx.numpy())
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    p = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    i = np.concatenate(indices) if indices else np.zeros(0, int)
    gathered = all_gather_object((p, i))
    if len(gathered) > 1:
        p = np.concatenate([g[0] for g in gathered if len(g[1])])
        i = np.concatenate([g[1] for g in gathered if len(g[1])])
        _, first = np.unique(i, return_index=True)
        p, i = p[first], i[first]
    return (EpochStats(loss_sum / max(count, 1), correct / max(count, 1), int(count),
                       time.perf_counter() - t0), p, i)
