"""Predictions of trained networks on a manifest: PyTorch checkpoints or a registry entry.

Both paths feed the same preprocessing (``load_model_input`` through the array cache) and
the same normalisation, so a checkpoint and its exported ONNX entry score alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mammo_density.train.data import ImageRecord
from mammo_density.train.dataset import ArrayCache
from mammo_density.train.metrics import Prediction

log = logging.getLogger(__name__)


def _batches(items: Sequence, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def load_checkpoint_models(run_dir: Path, *, which: str = "best") -> dict[str, tuple]:
    """``{slot: (model in eval mode, checkpoint dict)}`` from ``run_dir/<unit>/<which>.pth``.

    A per-view run has one folder per view slot; a shared network (``run_dir/shared/``)
    serves every slot its checkpoint names (the same model object for each).
    """
    import torch

    from mammo_density.study.slots import SLOTS
    from mammo_density.train.data import TASKS
    from mammo_density.train.model import build_network

    out = {}
    for unit in ("shared", *SLOTS):
        path = Path(run_dir) / unit / f"{which}.pth"
        if not path.exists():
            continue
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        a = ckpt["args"]
        model = build_network(a.get("arch") or "density-resnet",
                              num_classes=len(TASKS[a["task"]]), width=a["width"],
                              dropout=a.get("dropout", 0.0), head=a.get("head") or "pool")
        model.load_state_dict(ckpt["model"])
        model.eval()
        for slot in ckpt.get("slots") or [unit]:
            out.setdefault(slot, (model, ckpt))
    if not out:
        raise FileNotFoundError(f"no {which}.pth under {run_dir}/<view or shared>/")
    return out


def predict_checkpoints(run_dir: Path, records: Sequence[ImageRecord], *,
                        cache_dir: Path | None = None, which: str = "best",
                        batch_size: int = 32, device: str = "cpu"
                        ) -> tuple[list[Prediction], dict]:
    """Predictions of the PyTorch checkpoints in ``run_dir`` on ``records``.

    ``device`` is a torch device name (``auto``: CUDA when there is one). Returns the
    predictions and a description (task, input size, normalisation).
    """
    import torch

    from mammo_density.train.distributed import resolve_device

    target = resolve_device(device)
    models = load_checkpoint_models(run_dir, which=which)
    for model, _ in models.values():
        model.to(target)  # a shared network is one object under every slot: moved once
    first = next(iter(models.values()))[1]
    size, task = int(first["args"]["input_size"]), first["args"]["task"]
    norm = first["normalisation"]
    cache = ArrayCache(cache_dir, size)
    preds: list[Prediction] = []
    for slot, (model, ckpt) in models.items():
        recs = [r for r in records if r.slot == slot]
        m, s = ckpt["normalisation"]["mean"], ckpt["normalisation"]["std"]
        t = float(ckpt.get("temperature", 1.0))
        for chunk in _batches(recs, batch_size):
            x = np.stack([(cache.load(r.path) - m) / s for r in chunk])[:, None]
            with torch.no_grad():
                logits = model(torch.from_numpy(x.astype(np.float32)).to(target))
                p = torch.softmax(logits.float() / t, 1).cpu().numpy()
            preds.extend(_to_preds(chunk, p))
    missing = {r.slot for r in records} - set(models)
    if missing:
        log.warning("no network for views %s; their images are not scored", sorted(missing))
    return preds, {"task": task, "input_size": size, "normalisation": norm,
                   "source": str(run_dir)}


def predict_registry(model_dir: Path, records: Sequence[ImageRecord], *,
                     cache_dir: Path | None = None, batch_size: int = 32
                     ) -> tuple[list[Prediction], dict]:
    """Predictions of a registry entry (ONNX) on ``records``.

    Uses the worker's ``ModelSet`` (sha256 and preprocessing-version checks) when it is
    available, else ONNX Runtime directly after checking the sha256s here.
    """
    from mammo_density.manifest import read_manifest, sha256_file

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    try:
        from mammo_density.worker.models import ModelSet
    except ImportError:
        ModelSet = None
    if ModelSet is not None:
        # The worker's ModelSet verifies sha256s and the preprocessing version and applies
        # the manifest's normalisation itself: it takes [0, 1] model inputs.
        model_set = ModelSet.load(model_dir)
        predict, normalise = model_set.predict, False
    else:
        import onnxruntime as ort

        for fname, digest in manifest.files_sha256.items():
            if sha256_file(model_dir / fname) != digest:
                raise ValueError(f"{fname}: sha256 does not match the manifest")
        sessions = {slot: ort.InferenceSession(str(model_dir / f),
                                               providers=["CPUExecutionProvider"])
                    for slot, f in manifest.views.items()}

        def predict(slot: str, batch: np.ndarray) -> np.ndarray:
            return sessions[slot].run([manifest.output_name], {manifest.input_name: batch})[0]
        normalise = True
    cache = ArrayCache(cache_dir, manifest.input_size)
    m, s = manifest.normalisation.mean, manifest.normalisation.std
    preds: list[Prediction] = []
    for slot in manifest.views:
        recs = [r for r in records if r.slot == slot]
        for chunk in _batches(recs, batch_size):
            x = np.stack([cache.load(r.path) for r in chunk])[:, None].astype(np.float32)
            if normalise:
                x = ((x - m) / s).astype(np.float32)
            p = np.asarray(predict(slot, x))
            preds.extend(_to_preds(chunk, p))
    return preds, {"task": manifest.task, "input_size": manifest.input_size,
                   "normalisation": manifest.normalisation.model_dump(),
                   "source": f"{manifest.name} {manifest.version}"}


def _to_preds(chunk: Sequence[ImageRecord], probs: np.ndarray) -> list[Prediction]:
    out = []
    for r, p in zip(chunk, probs, strict=True):
        if r.density is None:
            continue
        out.append(Prediction(exam_id=r.exam_id, laterality=r.laterality, view=r.view,
                              probs=np.asarray(p, dtype=np.float64), density=r.density))
    return out
