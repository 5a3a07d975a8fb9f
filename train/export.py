"""Export trained per-view networks to an ONNX model-registry entry.

Every exported file is checked twice: ``onnx.checker`` on the graph, and ONNX Runtime
against PyTorch on the same inputs (max abs difference of the softmax within a stated
tolerance, 1e-4 in fp32). The registry entry's manifest records each file's sha256.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
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
                tolerance: float | None = None) -> float:
    """Write ``model`` (logits) as ONNX with a softmax output and a dynamic batch axis.

    Returns the max abs difference between ONNX Runtime's and PyTorch's probabilities on
    ``check_samples`` random inputs; raises :class:`ExportParityError` beyond ``tolerance``.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = WithSoftmax(model).eval().cpu()
    dummy = torch.zeros(1, 1, input_size, input_size)
    torch.onnx.export(
        wrapped, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset, dynamo=False,
    )
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

    Returns the manifest written to ``out_dir/manifest.json``; the parity of every file
    is recorded in ``metrics["export_parity_max_abs_diff"]``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    views: dict[str, str] = {}
    hashes: dict[str, str] = {}
    parity: dict[str, float] = {}
    for slot, model in models.items():
        filename = f"{slot}.onnx"
        parity[slot] = export_onnx(model, out_dir / filename, input_size, fp16=fp16,
                                   opset=opset)
        views[slot] = filename
        hashes[filename] = sha256_file(out_dir / filename)
    all_metrics = dict(metrics or {})
    all_metrics["export_parity_max_abs_diff"] = parity
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
    from mammo_density.train.model import count_conv_layers, count_residual_blocks

    architecture = {"type": "DensityResNet", "width": int(a["width"]),
                    "conv_layers": count_conv_layers(model0),
                    "residual_blocks": count_residual_blocks(model0),
                    "activation": "LeakyReLU", "output": "softmax"}
    all_metrics = dict(metrics or {})
    all_metrics["validation_accuracy"] = {slot: round(float(c["best_acc"]), 4)
                                          for slot, (_, c) in models.items()}
    all_metrics["best_epoch"] = {slot: int(c["best_epoch"]) for slot, (_, c) in models.items()}
    manifest = write_registry_entry(
        out_dir, {slot: m for slot, (m, _) in models.items()}, name=name, version=version,
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
