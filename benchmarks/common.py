"""Shared set-up of the inference benchmarks: a full-field study and a model to run.

- ``full_field_study(cache)``: one 4-view Hologic-like study at full resolution
  (3328 x 4096, 12-bit) in JPEG 2000 lossless, from ``mammo_density.synth``; cached.
- ``bench_model(cache, input_size, width)``: the bundled/given registry entry, or the
  method's DensityResNet (41 conv layers) at ``width`` with its own initial weights,
  exported through ``write_registry_entry`` (timings do not depend on the weights).
- ``copies(study_dir, n, out)``: ``n`` copies of a study with new Study/Series/SOP UIDs
  (pixel data copied as stored, still compressed), for throughput runs.
- ``module_at(rev, path)``: a module of this repository as it was at git revision
  ``rev``, loaded beside this tree's, for in-process A/B runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("MAMMO_DENSITY_BENCH_CACHE", "/tmp/mammo-density-bench"))


def pin_cores(n: int = 2) -> list[int]:
    """Restrict this process (and its children) to ``n`` cores when there are more."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > n:
        os.sched_setaffinity(0, set(cores[:n]))
    return sorted(os.sched_getaffinity(0))


def full_field_study(cache: Path = DEFAULT_CACHE, *, transfer_syntax: str = "jpeg2000",
                     seed: int = 7) -> Path:
    from mammo_density.synth import generate

    folder = Path(cache) / f"study-full-{transfer_syntax}-{seed}"
    if not (folder / "done").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        generate(folder / "data", studies=1, seed=seed, size="full", vendor="hologic",
                 transfer_syntax=transfer_syntax, manifest=False)
        (folder / "done").write_text("ok\n")
    return folder / "data"


def study_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.dcm"))


def bench_model(cache: Path = DEFAULT_CACHE, *, input_size: int = 512, width: int = 16,
                model_dir: str | None = None) -> Path:
    if model_dir:
        return Path(model_dir)
    from mammo_density.worker.preprocess import PREPROCESSING_VERSION

    # "-cf": exported with train/cpu_fusion.py's identity convs (entries cached before
    # that pass are not reused)
    folder = Path(cache) / f"model-w{width}-s{input_size}-{PREPROCESSING_VERSION}-cf"
    if not (folder / "manifest.json").is_file():
        import torch

        from mammo_density.study.slots import SLOTS
        from mammo_density.train.export import write_registry_entry
        from mammo_density.train.model import DensityResNet

        torch.manual_seed(0)
        models = {slot: DensityResNet(num_classes=4, width=width).eval() for slot in SLOTS}
        write_registry_entry(folder, models, name=f"bench-w{width}", version="0",
                             task="birads4", input_size=input_size,
                             preprocessing_version=PREPROCESSING_VERSION,
                             training_data="none (initial weights, for timing only)",
                             not_for_clinical_use=True,
                             architecture={"class": "DensityResNet", "width": width})
    return folder


def copies(study_dir: Path, n: int, out: Path) -> list[list[Path]]:
    """``n`` copies of the study under ``out`` with fresh UIDs; returns each copy's files."""
    files = study_files(study_dir)
    datasets = [pydicom.dcmread(f) for f in files]
    result = []
    for i in range(n):
        study_uid = generate_uid()
        series = {}
        paths = []
        folder = Path(out) / f"copy{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f, ds in zip(files, datasets, strict=True):
            ds.StudyInstanceUID = study_uid
            old_series = str(ds.SeriesInstanceUID)
            ds.SeriesInstanceUID = series.setdefault(old_series, generate_uid())
            sop = generate_uid()
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            path = folder / f.name
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        result.append(paths)
    return result


def module_at(rev: str, path: str) -> ModuleType:
    """``path`` (e.g. ``worker/preprocess.py``) as it was at git revision ``rev``, loaded
    as a module of its own; what it imports from the package is this tree's."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    name = "md_" + path.removesuffix(".py").replace("/", "_") + "_at_" + \
        "".join(c if c.isalnum() else "_" for c in rev)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module
