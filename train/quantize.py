"""INT8 variant of a registry entry: ONNX Runtime static quantisation, and its parity report.

Each view's fp32 network (without the identity Convs of ``train/cpu_fusion.py``) is
quantised with ``onnxruntime.quantization.quantize_static`` (QDQ format, int8 weights
per output channel, uint8 activations whose ranges are calibrated, by default with ONNX
Runtime's 99.999th percentile, on real model inputs:
preprocessed images of that view, normalised as the manifest says); the classifier head
and the softmax stay fp32. The files go beside the fp32 ones (``<view>.int8.onnx``) and
the manifest lists them as the ``int8`` variant with their sha256; the fp32 ``views``
stay the default. The parity report scores both variants on a labelled set with the
method's rules (``train/metrics.py``): exam- and breast-level agreement of int8 with
fp32, the change in accuracy and linear kappa against the labels, and the largest
probability difference. ``holds`` is true when the int8 networks may stand in for fp32
(:data:`PARITY_RULE`); the worker refuses an int8 variant whose recorded parity failed.

Needs the ``onnx`` package (``train`` extra); no PyTorch.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mammo_density.manifest import ModelManifest, read_manifest, sha256_file, write_manifest
from mammo_density.train.data import ImageRecord
from mammo_density.train.metrics import Prediction, build_levels, evaluate_predictions

log = logging.getLogger(__name__)

VARIANT = "int8"
# int8 may stand in for fp32 when, on the labelled set, at least 98% of exams get the same
# class as with fp32 and exam accuracy and linear kappa drop by at most 0.01 and 0.02.
PARITY_RULE = {"min_exam_agreement": 0.98, "max_accuracy_drop": 0.01,
               "max_kappa_drop": 0.02}


def int8_name(filename: str) -> str:
    return filename[:-len(".onnx")] + ".int8.onnx" if filename.endswith(".onnx") \
        else filename + ".int8.onnx"


def _load_inputs(records: Sequence[ImageRecord], size: int,
                 cache_dir: Path | None) -> dict[Path, np.ndarray]:
    """[0, 1] model inputs of the records' images (the shared preprocessing)."""
    from mammo_density.train.dataset import ArrayCache

    cache = ArrayCache(cache_dir, size, memory=False)
    return {r.path: np.ascontiguousarray(cache.load(r.path), dtype=np.float32)
            for r in records}


def _normalise(x: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    m, s = manifest.normalisation.mean, manifest.normalisation.std
    return np.ascontiguousarray(((x - m) / s)[None, None], dtype=np.float32)


class _Reader:
    """``CalibrationDataReader``: one normalised image per call, then None."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.name = name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.name: x}


def _head_nodes(model_path: Path) -> list[str]:
    """Nodes kept in fp32: the classifier head (Gemm/MatMul) and the softmax. Quantised,
    the probabilities would come in 1/255 steps and not sum to 1; the head is a tiny
    part of the cost."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul", "Softmax")]


def _without_fusion_convs(path: Path, tmp: Path) -> Path:
    """The fp32 graph without the identity Convs added for ONNX Runtime's fp32 CPU path
    (:mod:`mammo_density.train.cpu_fusion`): quantised, they are one more rounding step
    and no faster."""
    import onnx

    from mammo_density.train.cpu_fusion import remove_identity_convs

    model = onnx.load(str(path))
    if not remove_identity_convs(model):
        return path
    plain = tmp / "plain.onnx"
    onnx.save(model, str(plain))
    return plain


def quantize_entry(entry: Path, calibration: Sequence[ImageRecord], *,
                   cache_dir: Path | None = None, max_images: int = 64,
                   per_channel: bool = True, method: str = "percentile") -> ModelManifest:
    """Write the ``int8`` variant of every view's network beside it and list it in the
    manifest (file names and sha256). Calibration uses up to ``max_images`` images of
    each view from ``calibration`` (any view's images when a view has none); ``method``
    is ONNX Runtime's calibration method: ``minmax``, ``percentile`` or ``entropy``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}")
    entry = Path(entry)
    manifest = read_manifest(entry)
    for filename in manifest.views.values():
        if sha256_file(entry / filename) != manifest.files_sha256.get(filename):
            raise ValueError(f"{filename}: sha256 does not match the manifest")
    if not calibration:
        raise ValueError("no calibration images")
    inputs = _load_inputs(calibration, manifest.input_size, cache_dir)
    variant: dict[str, str] = {}
    done: dict[str, str] = {}  # fp32 file -> int8 file (views sharing a network)
    for slot, filename in manifest.views.items():
        if filename in done:
            variant[slot] = done[filename]
            continue
        own = [r.path for r in calibration if r.slot == slot] or [r.path for r in calibration]
        batches = [_normalise(inputs[p], manifest) for p in own[:max_images]]
        target = int8_name(filename)
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(_without_fusion_convs(entry / filename, Path(tmp))),
                              str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(entry / target),
                            _Reader(manifest.input_name, batches),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method],
                            nodes_to_exclude=_head_nodes(pre))
        manifest.files_sha256[target] = sha256_file(entry / target)
        variant[slot] = done[filename] = target
        log.info("%s: %s -> %s (%d calibration images)", slot, filename, target,
                 len(batches))
    manifest.variants[VARIANT] = variant
    manifest.commands.append(f"mammo-density quantize (int8, static, {len(calibration)} "
                             f"calibration images, {method}, per_channel={per_channel})")
    write_manifest(entry, manifest)
    return manifest


def _predict(entry: Path, variant: str, records: Sequence[ImageRecord],
             inputs: dict[Path, np.ndarray]) -> list[Prediction]:
    from mammo_density.worker.models import ModelSet

    ms = ModelSet.load(entry, variant=variant, check_parity=False)
    preds = []
    for r in records:
        if r.density is None or r.slot not in ms.sessions:
            continue
        p = ms.predict(r.slot, inputs[r.path][None])[0]
        preds.append(Prediction(exam_id=r.exam_id, laterality=r.laterality, view=r.view,
                                probs=np.asarray(p, dtype=np.float64), density=r.density))
    return preds


def parity_report(entry: Path, records: Sequence[ImageRecord], *,
                  cache_dir: Path | None = None) -> dict[str, object]:
    """fp32 against int8 on labelled ``records``: agreement, metrics, their change."""
    entry = Path(entry)
    manifest = read_manifest(entry)
    if VARIANT not in manifest.variants:
        raise ValueError(f"{entry} has no {VARIANT} variant; quantize it first")
    inputs = _load_inputs(records, manifest.input_size, cache_dir)
    fp32 = _predict(entry, "fp32", records, inputs)
    int8 = _predict(entry, VARIANT, records, inputs)
    if not fp32:
        raise ValueError("no labelled images to compare on")
    task = manifest.task
    lv32, lv8 = build_levels(fp32, task), build_levels(int8, task)
    m32 = evaluate_predictions(fp32, task, n_boot=0)
    m8 = evaluate_predictions(int8, task, n_boot=0)
    diff = max(float(np.max(np.abs(a.probs - b.probs))) for a, b in zip(fp32, int8,
                                                                      strict=True))
    report: dict[str, object] = {
        "model": f"{manifest.name} {manifest.version}", "task": task,
        "exams": m32["exams"], "images": m32["images"],
        "max_abs_probability_diff": round(diff, 5)}
    for level in ("exam", "breast"):
        a, b = lv32[level], lv8[level]
        e32, e8 = m32["levels"][level], m8["levels"][level]  # type: ignore[index]
        report[level] = {
            "agreement": round(float(np.mean(a.y_pred == b.y_pred)), 4),
            "dense_agreement": round(float(np.mean((a.y_pred >= 2) == (b.y_pred >= 2))), 4)
            if task == "birads4" else None,
            "accuracy_fp32": round(e32["accuracy"], 4),
            "accuracy_int8": round(e8["accuracy"], 4),
            "accuracy_change": round(e8["accuracy"] - e32["accuracy"], 4),
            "kappa_fp32": round(e32["kappa_linear"], 4),
            "kappa_int8": round(e8["kappa_linear"], 4),
            "kappa_change": round(e8["kappa_linear"] - e32["kappa_linear"], 4)}
    exam = report["exam"]
    assert isinstance(exam, dict)
    report["rule"] = dict(PARITY_RULE)
    report["holds"] = bool(
        exam["agreement"] >= PARITY_RULE["min_exam_agreement"]
        and exam["accuracy_change"] >= -PARITY_RULE["max_accuracy_drop"]
        and exam["kappa_change"] >= -PARITY_RULE["max_kappa_drop"])
    return report


def record_parity(entry: Path, report: dict[str, object]) -> ModelManifest:
    """Store the parity report's headline figures in the manifest (``metrics.int8_parity``),
    where the worker reads ``holds`` before it loads the int8 variant."""
    manifest = read_manifest(entry)
    exam = report["exam"]
    assert isinstance(exam, dict)
    manifest.metrics["int8_parity"] = {
        "holds": report["holds"], "exams": report["exams"],
        "exam_agreement": exam["agreement"], "exam_accuracy_change": exam["accuracy_change"],
        "exam_kappa_change": exam["kappa_change"],
        "max_abs_probability_diff": report["max_abs_probability_diff"]}
    write_manifest(Path(entry), manifest)
    return manifest


__all__ = ["PARITY_RULE", "VARIANT", "int8_name", "parity_report", "quantize_entry",
           "record_parity"]
