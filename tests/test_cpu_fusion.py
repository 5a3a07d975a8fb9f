"""The CPU-fusion graph pass (train/cpu_fusion.py): identity depthwise Convs before the
LeakyRelus that follow residual Adds, so that ONNX Runtime keeps the method's ResNet in
its blocked (NCHWc) layout; same outputs; taken out again for int8 quantisation."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mammo_density.train.cpu_fusion import (
    PREFIX,
    add_identity_convs,
    count_identity_convs,
    remove_identity_convs,
)
from mammo_density.train.export import export_onnx
from mammo_density.train.model import DensityResNet

SIZE = 64


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _residual_leaky(model: onnx.ModelProto) -> int:
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "LeakyRelu"
               and producer.get(n.input[0]) is not None
               and producer[n.input[0]].op_type == "Add")


def _run(path: Path, x: np.ndarray, *, optimized: Path | None = None) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """The method's ResNet (width 16: channels in whole blocks of the CPU's layout)
    exported without and with the pass."""
    root = tmp_path_factory.mktemp("fusion")
    torch.manual_seed(0)
    model = DensityResNet(width=16).eval()
    plain, fused = root / "plain.onnx", root / "fused.onnx"
    export_onnx(model, plain, SIZE, cpu_fusion=False)
    export_onnx(model, fused, SIZE)  # the default: with the pass (parity checked inside)
    return plain, fused


def test_one_identity_conv_per_residual_activation(exported):
    plain, fused = (onnx.load(str(p)) for p in exported)
    blocks = _residual_leaky(plain)
    assert blocks == 12  # the method's ResNet: 12 residual blocks
    assert count_identity_convs(plain) == 0
    assert count_identity_convs(fused) == blocks and _residual_leaky(fused) == 0
    assert _ops(fused)["Conv"] == _ops(plain)["Conv"] + blocks
    for node in fused.graph.node:
        if node.name.startswith(PREFIX):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weight = next(t for t in fused.graph.initializer if t.name == node.input[1])
            bias = next(t for t in fused.graph.initializer if t.name == node.input[2])
            channels = attrs["group"]
            assert attrs["kernel_shape"] == [1, 1] and channels >= 4
            assert np.array_equal(onnx.numpy_helper.to_array(weight),
                                  np.ones((channels, 1, 1, 1), np.float32))
            assert not onnx.numpy_helper.to_array(bias).any()
    onnx.checker.check_model(fused)
    again = onnx.load(str(exported[1]))
    assert add_identity_convs(again) == 0  # applied once only


def test_same_outputs_and_no_layout_round_trips(exported, tmp_path):
    plain, fused = exported
    x = np.random.default_rng(1).random((3, 1, SIZE, SIZE), dtype=np.float32)
    a = _run(plain, x, optimized=tmp_path / "plain.opt.onnx")
    b = _run(fused, x, optimized=tmp_path / "fused.opt.onnx")
    assert np.abs(a - b).max() <= 1e-6
    reorders = {name: sum(_ops(onnx.load(str(tmp_path / f"{name}.opt.onnx")))[op]
                          for op in ("ReorderInput", "ReorderOutput"))
                for name in ("plain", "fused")}
    if reorders["plain"] > 2:  # ONNX Runtime uses its blocked layout on this CPU
        # in and out of the blocked layout once, not around every residual activation
        assert reorders["fused"] <= 2, reorders


def test_removing_restores_the_plain_graph(exported, tmp_path):
    plain, fused = (onnx.load(str(p)) for p in exported)
    assert remove_identity_convs(fused) == 12
    assert count_identity_convs(fused) == 0 and remove_identity_convs(fused) == 0
    assert [(n.op_type, list(n.input), list(n.output)) for n in fused.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in plain.graph.node]
    assert sorted(t.name for t in fused.graph.initializer) == \
        sorted(t.name for t in plain.graph.initializer)
    onnx.save(fused, str(tmp_path / "restored.onnx"))
    x = np.random.default_rng(2).random((2, 1, SIZE, SIZE), dtype=np.float32)
    assert np.array_equal(_run(tmp_path / "restored.onnx", x), _run(exported[0], x))


def test_int8_is_quantised_from_the_plain_graph(exported, tmp_path):
    from mammo_density.train.quantize import _without_fusion_convs

    source = _without_fusion_convs(exported[1], tmp_path)
    assert source != exported[1] and count_identity_convs(onnx.load(str(source))) == 0
    assert _without_fusion_convs(exported[0], tmp_path) == exported[0]  # nothing to take out


def test_fp16_export_is_left_alone(tmp_path):
    torch.manual_seed(0)
    export_onnx(DensityResNet(width=4).eval(), tmp_path / "h.onnx", 32, fp16=True)
    assert count_identity_convs(onnx.load(str(tmp_path / "h.onnx"))) == 0
