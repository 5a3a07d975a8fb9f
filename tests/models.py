"""Small ONNX model registry entries for tests, made with the project's own export.

The networks are the method's :class:`~mammo_density.train.model.DensityResNet` at a small
width with fixed random weights (``torch.manual_seed``). The batch-norm affine parameters
and running statistics are randomised too (the network's own init makes every residual
block the identity and would give nearly uniform, input-independent outputs), so two
different images give different probabilities. Export goes through
``mammo_density.train.export.write_registry_entry`` (onnx.checker + ORT/PyTorch parity).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mammo_density.manifest import ModelManifest, read_manifest
from mammo_density.views import SLOTS
from mammo_density.worker.preprocess import PREPROCESSING_VERSION

TEST_INPUT_SIZE = 64


def random_network(*, num_classes: int, width: int, seed: int, input_size: int = 64):
    """A DensityResNet with weights, BN affine parameters and BN running statistics drawn
    from ``seed``: the running statistics are calibrated on smooth random images (so the
    activations neither vanish nor explode), the affine parameters then randomised."""
    import torch
    from torch import nn

    from mammo_density.train.model import DensityResNet

    torch.manual_seed(seed)
    net = DensityResNet(num_classes=num_classes, width=width)
    gen = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            n = m.num_features
            m.weight.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.copy_(0.3 * torch.randn(n, generator=gen))
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
        net.train()
        calib = []
        for _ in range(2):
            x = torch.rand(8, 1, input_size // 8, input_size // 8, generator=gen)
            calib.append(nn.functional.interpolate(x, size=(input_size, input_size),
                                                   mode="bilinear"))
            net(calib[-1])
        net.eval()
        # head: logits centred on the calibration images, spread ~ N(0, 1.5^2) per class
        feats = torch.flatten(net.pool(net.forward_features(torch.cat(calib))), 1)
        mean, std = feats.mean(0), feats.std(0) + 1e-3
        head = net.head
        weight = torch.randn(head.weight.shape, generator=gen) / std / feats.shape[1] ** 0.5
        head.weight.copy_(weight * 1.5)
        head.bias.copy_(-(head.weight @ mean) + 0.3 * torch.randn(head.bias.shape,
                                                                 generator=gen))
    return net


def make_registry_entry(out_dir: Path, *, task: str = "birads4",
                        input_size: int = TEST_INPUT_SIZE, width: int = 4, seed: int = 0,
                        name: str = "test-model", version: str = "0.0.1",
                        slots: tuple[str, ...] = SLOTS,
                        preprocessing_version: str = PREPROCESSING_VERSION) -> ModelManifest:
    """Write a registry entry with fixed-random-weight networks to ``out_dir``."""
    from mammo_density.manifest import TASK_CLASSES
    from mammo_density.train.export import write_registry_entry

    classes = len(TASK_CLASSES[task])
    models = {slot: random_network(num_classes=classes, width=width, seed=seed + 101 * i,
                                    input_size=input_size)
              for i, slot in enumerate(slots)}
    return write_registry_entry(
        Path(out_dir), models, name=name, version=version, task=task, input_size=input_size,
        preprocessing_version=preprocessing_version,
        training_data="none: fixed random weights for tests",
        intended_use="software tests only", not_for_clinical_use=True,
        architecture={"class": "DensityResNet", "width": width, "seed": seed},
    )


def _cache_root() -> Path:
    return Path(os.environ.get("MAMMO_DENSITY_TEST_MODEL_CACHE")
                or Path(tempfile.gettempdir()) / "mammo-density-test-models")


def _cache_key(kwargs: dict) -> str:
    """Arguments + the code that shapes the exported files (network, export, this file)."""
    import torch

    import mammo_density.train.export as export_mod
    import mammo_density.train.model as model_mod

    digest = hashlib.sha256(repr(sorted(kwargs.items())).encode())
    for mod in (model_mod, export_mod):
        digest.update(Path(mod.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{PREPROCESSING_VERSION} {torch.__version__}".encode())
    return digest.hexdigest()[:16]


def cached_registry_entry(root: Path, **kwargs) -> Path:
    """Like :func:`make_registry_entry`, exported once per argument set and code version
    into a cache under the temp dir (exports take ~10 s), then copied under ``root``."""
    key = _cache_key(kwargs)
    src = _cache_root() / key
    if not (src / "manifest.json").is_file():
        src.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=key + ".", dir=src.parent))
        make_registry_entry(work / "entry", **kwargs)
        with contextlib.suppress(OSError):  # atomic; another process may have won
            os.rename(work / "entry", src)
        shutil.rmtree(work, ignore_errors=True)
    name, task = kwargs.get("name", "test-model"), kwargs.get("task", "birads4")
    dest = Path(root) / f"{name}-{task}-{key[:8]}"
    if not dest.exists():
        shutil.copytree(src, dest)
    return dest


def rewrite_manifest(folder: Path, **changes) -> None:
    """Change manifest fields in place (for tests of load-time checks)."""
    manifest = read_manifest(folder)
    data = manifest.model_dump(mode="json")
    data.update(changes)
    (Path(folder) / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
