"""Export trained per-view networks to an ONNX model-registry entry.

Every exported file is checked twice: ``onnx.checker`` on the graph, and ONNX Runtime
against PyTorch on the same inputs (max abs difference of the softmax within a stated
tolerance, 1e-4 in fp32). The registry entry's manifest records each file's sha256.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mammo_density.manifest import (
    TASK_CLASSES,
    ModelManifest,
    Normalisation,
    sha256_file,
    write_manifest,
)
from mammo_density.train.model import WithSoftmax

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2


class ExportParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


def export_onnx(model: nn.Module, path: Path, input_size: int, *, opset: int = 17,
                fp16: bool = False, check_samples: int = 2, seed: int = 0,
                tolerance: float | None = None, cpu_fusion: bool = True) -> float:
    """Write ``model`` (logits) as ONNX with a softmax output and a dynamic batch axis.

    ``cpu_fusion`` (fp32 only): an identity depthwise Conv before each LeakyRelu that
    follows a residual Add, so that ONNX Runtime's CPU path fuses it
    (:mod:`mammo_density.train.cpu_fusion`). Returns the max abs difference between ONNX
    Runtime's and PyTorch's probabilities on ``check_samples`` random inputs; raises
    :class:`ExportParityError` beyond ``tolerance``.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = (model if getattr(model, "outputs_probabilities", False)
               else WithSoftmax(model)).eval().cpu()
    dummy = torch.zeros(1, 1, input_size, input_size)
    torch.onnx.export(
        wrapped, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset, dynamo=False,
    )
    if cpu_fusion and not fp16:
        from mammo_density.train.cpu_fusion import add_identity_convs

        graph = onnx.load(str(path))
        if add_identity_convs(graph):
            onnx.save(graph, str(path))
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        graph = onnx.load(str(path))
        graph = convert_float_to_float16(graph, keep_io_types=True)
        _toposort(graph.graph)
        onnx.save(graph, str(path))
    onnx.checker.check_model(str(path))

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(check_samples, 1, input_size, input_size, generator=gen)
    with torch.no_grad():
        expected = wrapped(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})[0]
    diff = float(np.max(np.abs(got - expected)))
    limit = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    if not diff <= limit:
        raise ExportParityError(f"{path.name}: ONNX Runtime vs PyTorch max |diff| {diff:.2e} "
                                f"> {limit:.0e}")
    log.info("exported %s (parity %.2e)", path.name, diff)
    return diff


def time_onnx(path: Path, input_size: int, *, runs: int = 10, threads: int = 1) -> float:
    """Median milliseconds of one image (batch 1) through ONNX Runtime on the CPU."""
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=opts,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, input_size, input_size), dtype=np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return round(float(np.median(times)), 2)


def _fusion_convs(path: Path) -> int:
    import onnx

    from mammo_density.train.cpu_fusion import count_identity_convs

    return count_identity_convs(onnx.load(str(path)))


def _toposort(graph) -> None:
    """Reorder ``graph.node`` topologically (the fp16 converter appends its input casts)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        for node in list(pending):
            if all(not name or name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                pending.remove(node)
                progressed = True
        if not progressed:
            raise ExportParityError("ONNX graph has a cycle or a missing input after fp16 "
                                    "conversion")
    del graph.node[:]
    graph.node.extend(ordered)


def write_registry_entry(
    out_dir: Path,
    models: Mapping[str, nn.Module],
    *,
    name: str,
    version: str,
    task: str,
    input_size: int,
    preprocessing_version: str,
    training_data: str,
    normalisation: Normalisation | None = None,
    metrics: dict | None = None,
    intended_use: str = "",
    not_for_clinical_use: bool = False,
    architecture: dict | None = None,
    commands: list[str] | None = None,
    fp16: bool = False,
    opset: int = 17,
) -> ModelManifest:
    """Export one network per view (slot -> module) and write the manifest.

    One module serving several slots (a network shared across views) is written once, as
    ``shared.onnx``, and named for each of its slots. Returns the manifest written to
    ``out_dir/manifest.json``; the parity of every file is recorded in
    ``metrics["export_parity_max_abs_diff"]`` and its ONNX Runtime CPU time per image in
    ``metrics["inference_ms_per_image"]``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    views: dict[str, str] = {}
    hashes: dict[str, str] = {}
    parity: dict[str, float] = {}
    timing: dict[str, float] = {}
    fusion: dict[str, int] = {}
    done: dict[int, str] = {}
    users: dict[int, int] = {}
    for model in models.values():
        users[id(model)] = users.get(id(model), 0) + 1
    for slot, model in models.items():
        if id(model) in done:
            views[slot] = done[id(model)]
            continue
        filename = "shared.onnx" if users[id(model)] > 1 else f"{slot}.onnx"
        key = filename[:-len(".onnx")]
        parity[key] = export_onnx(model, out_dir / filename, input_size, fp16=fp16,
                                  opset=opset)
        timing[key] = time_onnx(out_dir / filename, input_size)
        fusion[key] = _fusion_convs(out_dir / filename)
        views[slot] = done[id(model)] = filename
        hashes[filename] = sha256_file(out_dir / filename)
    all_metrics = dict(metrics or {})
    all_metrics["export_parity_max_abs_diff"] = parity
    all_metrics["inference_ms_per_image"] = timing
    if any(fusion.values()):
        all_metrics["cpu_fusion_identity_convs"] = fusion
    manifest = ModelManifest(
        name=name, version=version, task=task, classes=TASK_CLASSES[task], views=views,
        input_size=input_size, preprocessing_version=preprocessing_version,
        normalisation=normalisation or Normalisation(), files_sha256=hashes,
        input_name=INPUT_NAME, output_name=OUTPUT_NAME, architecture=architecture or {},
        training_data=training_data, metrics=all_metrics, intended_use=intended_use,
        not_for_clinical_use=not_for_clinical_use,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        commands=commands or [],
    )
    write_manifest(out_dir, manifest)
    return manifest


def export_run(run_dir: Path, out_dir: Path, *, name: str, version: str,
               which: str = "best", training_data: str = "", metrics: dict | None = None,
               intended_use: str = "", not_for_clinical_use: bool = False,
               commands: list[str] | None = None, fp16: bool = False,
               opset: int = 17, evaluation: dict | None = None) -> ModelManifest:
    """Export a training run's per-view checkpoints (``run_dir/<view>/<which>.pth``).

    Task, input size, width and normalisation come from the checkpoints, which must agree.
    Also writes ``MODEL_CARD.md`` (with ``evaluation``, a result of ``evaluate``, if given).
    """
    from mammo_density.train.evaluation import load_checkpoint_models
    from mammo_density.worker.preprocess import PREPROCESSING_VERSION

    models = load_checkpoint_models(run_dir, which=which)
    keys = {(c["args"]["task"], int(c["args"]["input_size"]), int(c["args"]["width"]),
             round(c["normalisation"]["mean"], 6), round(c["normalisation"]["std"], 6))
            for _, c in models.values()}
    if len(keys) != 1:
        raise ValueError(f"the views' checkpoints disagree on task/size/width/normalisation: "
                         f"{sorted(keys)}")
    stale = {slot: c.get("preprocessing_version") for slot, (_, c) in models.items()
             if c.get("preprocessing_version") != PREPROCESSING_VERSION}
    if stale:
        raise ValueError(f"checkpoints were trained on preprocessing {stale}, the installed "
                         f"preprocessing is {PREPROCESSING_VERSION}: retrain (a model only "
                         "works on the inputs it was trained on)")
    first = next(iter(models.values()))[1]
    a = first["args"]
    model0 = next(iter(models.values()))[0]
    architecture = _architecture(a, model0, network="shared" if len(
        {id(m) for m, _ in models.values()}) < len(models) else "per-view")
    all_metrics = dict(metrics or {})
    val_acc = {slot: round(float(c["best_acc"]), 4) for slot, (_, c) in models.items()
               if np.isfinite(float(c["best_acc"]))}
    if val_acc:  # a fixed schedule without validation women (--val-fraction 0) has none
        all_metrics["validation_accuracy"] = val_acc
    temps = {slot: round(float(c.get("temperature", 1.0)), 4) for slot, (_, c) in models.items()}
    if any(t != 1.0 for t in temps.values()):
        all_metrics["temperature"] = temps
        all_metrics["calibration"] = {slot: c.get("calibration") for slot, (_, c)
                                      in models.items()}
    all_metrics["best_epoch"] = {slot: int(c["best_epoch"]) for slot, (_, c) in models.items()}
    manifest = write_registry_entry(
        out_dir, _wrapped_views(models), name=name, version=version,
        task=a["task"], input_size=int(a["input_size"]),
        preprocessing_version=PREPROCESSING_VERSION,
        training_data=training_data or f"manifest {Path(a['manifest']).name}",
        normalisation=Normalisation(mean=first["normalisation"]["mean"],
                                    std=first["normalisation"]["std"]),
        metrics=all_metrics, intended_use=intended_use,
        not_for_clinical_use=not_for_clinical_use, architecture=architecture,
        commands=commands, fp16=fp16, opset=opset)
    from mammo_density.train.model_card import write_card

    write_card(out_dir, manifest, evaluation, a)
    return manifest


def _architecture(a: dict, model: nn.Module, *, network: str, members: int = 1,
                  runs: int = 1) -> dict:
    from mammo_density.train.model import (
        activation_name,
        count_conv_layers,
        count_residual_blocks,
    )

    arch = a.get("arch") or "density-resnet"
    out: dict[str, object] = {
        "type": type(model).__name__,
        "conv_layers": count_conv_layers(model),
        "residual_blocks": count_residual_blocks(model),
        "activation": activation_name(model),
        "output": "softmax", "network": network}
    if arch == "density-resnet":
        out["width"] = int(a["width"])
        out["head"] = a.get("head") or "pool"
    if members > 1:
        out["ensemble"] = f"mean of {members} fold models' probabilities" + (
            f" ({runs} cross-validation runs)" if runs > 1 else "")
        out["members"] = members
    if runs > 1:
        out["runs"] = runs
    return out


def _wrapped_views(models: Mapping[str, tuple[nn.Module, dict]]) -> dict[str, nn.Module]:
    """slot -> network with its temperature; a network shared by slots stays one object."""
    cache: dict[int, nn.Module] = {}
    return {slot: cache.setdefault(id(m), _with_temperature(m, c))
            for slot, (m, c) in models.items()}


def _with_temperature(model: nn.Module, ckpt: dict) -> nn.Module:
    """The network with its calibration temperature folded into the exported softmax."""
    t = float(ckpt.get("temperature", 1.0))
    if t == 1.0:
        return model
    from mammo_density.train.model import WithSoftmax

    wrapped = WithSoftmax(model, t)
    wrapped.outputs_probabilities = True  # type: ignore[attr-defined]
    return wrapped


def fold_dirs(cv_dir: Path) -> list[Path]:
    """``cv_dir/fold-<i>`` folders in fold order."""
    dirs = [p for p in Path(cv_dir).glob("fold-*") if p.is_dir()]
    return sorted(dirs, key=lambda p: int(p.name.split("-")[1]))


def export_cv(cv_dir: Path | Sequence[Path], out_dir: Path, *, name: str, version: str,
              which: str = "best", training_data: str = "", intended_use: str = "",
              not_for_clinical_use: bool = False, commands: list[str] | None = None,
              fp16: bool = False, opset: int = 17,
              cv_report: dict | None = None) -> ModelManifest:
    """Export the K fold models of ``train --cv K`` together as one registry entry.

    ``cv_dir`` may name several such runs on the same folds (one recipe trained with
    different seeds): all their fold models go into the one mean.

    Each view's file outputs the mean of the fold models' probabilities (each with its own
    normalisation and calibration temperature inside the graph, so the manifest's
    normalisation is the identity). A shared network gives one file for all views. The
    cross-validation table (``cv_dir/cv.json``, or ``cv_report``: rows of the CNN and of
    the baselines on the same folds) goes into the manifest's metrics and the model card.
    """
    import json

    from mammo_density.train.evaluation import load_checkpoint_models
    from mammo_density.train.model import Ensemble
    from mammo_density.worker.preprocess import PREPROCESSING_VERSION

    runs = [Path(cv_dir)] if isinstance(cv_dir, (str, Path)) else [Path(d) for d in cv_dir]
    folds: list[Path] = []
    for run in runs:
        found = fold_dirs(run)
        if not found:
            raise FileNotFoundError(f"no fold-<i>/ folders under {run} (run train --cv K)")
        folds += found
    per_fold = [load_checkpoint_models(f, which=which) for f in folds]
    first_ckpt = next(iter(per_fold[0].values()))[1]
    a = first_ckpt["args"]
    keys = {(c["args"]["task"], int(c["args"]["input_size"]), c.get("preprocessing_version"))
            for m in per_fold for _, c in m.values()}
    if len(keys) != 1:
        raise ValueError(f"the fold models disagree on task/size/preprocessing: {sorted(keys)}")
    if first_ckpt.get("preprocessing_version") != PREPROCESSING_VERSION:
        raise ValueError(f"fold models were trained on preprocessing "
                         f"{first_ckpt.get('preprocessing_version')}, the installed "
                         f"preprocessing is {PREPROCESSING_VERSION}: retrain")
    slots = sorted(set.intersection(*(set(m) for m in per_fold)),
                   key=lambda s: ("R-CC", "L-CC", "R-MLO", "L-MLO").index(s))
    ensembles: dict[str, nn.Module] = {}
    by_members: dict[tuple[int, ...], nn.Module] = {}
    for slot in slots:
        members = [m[slot] for m in per_fold]
        key = tuple(id(model) for model, _ in members)
        if key not in by_members:
            by_members[key] = Ensemble(
                [model for model, _ in members],
                [(c["normalisation"]["mean"], c["normalisation"]["std"]) for _, c in members],
                [float(c.get("temperature", 1.0)) for _, c in members])
            by_members[key].outputs_probabilities = True  # type: ignore[attr-defined]
        ensembles[slot] = by_members[key]
    network = "shared" if len(by_members) < len(slots) else "per-view"
    architecture = _architecture(a, per_fold[0][slots[0]][0], network=network,
                                 members=len(folds), runs=len(runs))
    report = cv_report
    if report is None and (runs[0] / "cv.json").exists():
        report = json.loads((runs[0] / "cv.json").read_text())
    metrics: dict[str, object] = {
        "temperature": [float(m[slots[0]][1].get("temperature", 1.0)) for m in per_fold],
        "calibration": [m[slots[0]][1].get("calibration") for m in per_fold]}
    if report:
        metrics["cross_validation"] = {
            "k": report.get("k"), "split_seed": report.get("split_seed"),
            "input_size": report.get("input_size"),
            "rows": {n: {"summary": r["summary"], "seconds": r.get("seconds")}
                     for n, r in report.get("rows", {}).items()}}
    manifest = write_registry_entry(
        out_dir, ensembles, name=name, version=version, task=a["task"],
        input_size=int(a["input_size"]), preprocessing_version=PREPROCESSING_VERSION,
        training_data=training_data or f"manifest {Path(a['manifest']).name}",
        normalisation=Normalisation(), metrics=metrics, intended_use=intended_use,
        not_for_clinical_use=not_for_clinical_use, architecture=architecture,
        commands=commands, fp16=fp16, opset=opset)
    from mammo_density.train.model_card import write_card

    write_card(out_dir, manifest, None, a)
    return manifest
