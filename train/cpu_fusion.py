"""An ONNX graph pass for ONNX Runtime's CPU path: keep residual blocks in its NCHWc layout.

On x86 CPUs ONNX Runtime (graph optimisation ``all``) runs convolutions in a blocked
channel layout (NCHWc) and fuses a convolution's bias, a residual ``Add`` and a
following activation into one kernel. For ``LeakyRelu`` after the residual ``Add`` it
does not (ONNX Runtime 1.32): every such activation is run in the plain layout, with a
reorder out of the blocked layout before it and back after it. In the method's ResNet
(LeakyReLU throughout, 12 residual blocks) those reorders were ~11 % and the stray
activations ~3 % of the network's CPU time at 650 px.

:func:`add_identity_convs` puts a 1x1 depthwise convolution with weight 1 and bias 0 in
front of each such ``LeakyRelu``. The Add then fuses into the convolution before it, the
LeakyRelu into the identity convolution, and the whole network stays in the blocked
layout: 8-11 % less CPU for a study's four views (width 16, 650 px, 2 cores;
``benchmarks.ort_tuning``, configs ``views2x1`` and ``views2x1-plain``), outputs equal
within 1e-7.
The inserted nodes are named ``cpu_fusion/...``; :func:`remove_identity_convs` takes
them out again (the int8 variant is quantised from the graph without them: there they
are an extra quantised step and no faster).

Needs the ``onnx`` package (``train`` extra).
"""

from __future__ import annotations

import numpy as np

PREFIX = "cpu_fusion/"
_RESIDUAL = ("Add", "Sum")


def _float_channels(model) -> dict[str, int]:
    """Tensor name -> static channel count (dim 1), for the rank-4 float tensors ONNX shape
    inference can size."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, int] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        kind = info.type.tensor_type
        dims = kind.shape.dim
        if kind.elem_type == TensorProto.FLOAT and len(dims) == 4 \
                and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            out[info.name] = int(dims[1].dim_value)
    return out


def add_identity_convs(model) -> int:
    """Insert an identity depthwise Conv before every float ``LeakyRelu`` whose input is
    a residual ``Add``/``Sum`` of rank-4 tensors with a static channel count; in place.
    Returns the number inserted (0 for a graph without that pattern or already done)."""
    from onnx import helper, numpy_helper

    producer = {out: node for node in model.graph.node for out in node.output}
    wanted = [n for n in model.graph.node
              if n.op_type == "LeakyRelu" and n.domain in ("", "ai.onnx")
              and producer.get(n.input[0]) is not None
              and producer[n.input[0]].op_type in _RESIDUAL
              and not producer[n.input[0]].name.startswith(PREFIX)]
    if not wanted:
        return 0
    wanted_outputs = {n.output[0] for n in wanted}
    channels_of = _float_channels(model)
    inserted = 0
    nodes = []
    for node in model.graph.node:
        channels = (channels_of.get(node.input[0])
                    if node.op_type == "LeakyRelu" and node.output[0] in wanted_outputs
                    else None)
        if channels is not None:
            base = f"{PREFIX}{node.name or node.output[0]}"
            weight, bias, out = f"{base}/weight", f"{base}/bias", f"{base}/output"
            model.graph.initializer.extend([
                numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), weight),
                numpy_helper.from_array(np.zeros((channels,), np.float32), bias)])
            nodes.append(helper.make_node("Conv", [node.input[0], weight, bias], [out],
                                          name=base, group=channels, kernel_shape=[1, 1]))
            node.input[0] = out
            inserted += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return inserted


def remove_identity_convs(model) -> int:
    """Take out the Conv nodes :func:`add_identity_convs` inserted (consumers read the
    Conv's input again); in place. Returns the number removed."""
    ours = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(PREFIX)]
    if not ours:
        return 0
    rename = {n.output[0]: n.input[0] for n in ours}
    dropped = {name for n in ours for name in n.input[1:]}
    kept = [n for n in model.graph.node if n.output[0] not in rename]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for out in model.graph.output:
        if out.name in rename:
            raise ValueError(f"{out.name}: a graph output cannot lose its producer")
    del model.graph.node[:]
    model.graph.node.extend(kept)
    keep_init = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep_init)
    keep_info = [v for v in model.graph.value_info if v.name not in rename]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep_info)
    return len(ours)


def count_identity_convs(model) -> int:
    """How many :func:`add_identity_convs` nodes a graph holds."""
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(PREFIX))


__all__ = ["PREFIX", "add_identity_convs", "count_identity_convs", "remove_identity_convs"]
