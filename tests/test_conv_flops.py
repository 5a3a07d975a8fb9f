"""benchmarks/conv_flops.py: the convolution arithmetic and a run on a small entry."""

from __future__ import annotations

import json

from benchmarks.conv_flops import conv_flops, main
from tests.models import cached_registry_entry


def _args(out: list[int], weight: list[int]) -> dict:
    return {"output_type_shape": [{"float": out}],
            "input_type_shape": [{"float": [1, 1, 8, 8]}, {"float": weight}]}


def test_conv_flops_counts_multiply_adds_per_output_element():
    # 7x7 stem, 1 input channel, 32 outputs of 325 x 325: 2 x 32 x 325^2 x 49
    assert conv_flops(_args([1, 32, 325, 325], [32, 1, 7, 7]))[0] == 2 * 32 * 325 * 325 * 49
    # the same in ONNX Runtime's blocked layout (N, C/8, H, W, 8): the same count
    assert conv_flops(_args([1, 4, 325, 325, 8], [32, 1, 7, 7]))[0] == 2 * 32 * 325 * 325 * 49
    # depthwise 1x1 (one input channel per group)
    assert conv_flops(_args([1, 64, 10, 10], [64, 1, 1, 1]))[0] == 2 * 64 * 100


def test_a_run_accounts_for_every_convolution(tmp_path_factory, capsys):
    entry = cached_registry_entry(tmp_path_factory.mktemp("models"))
    assert main(["--model-dir", str(entry), "--rounds", "2", "--top", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["conv_share"] > 0.3 and report["conv_gflop_per_s"] > 0
    layers = report["slowest"]
    assert layers and all(r["op"] in ("Conv", "FusedConv") for r in layers)
    assert abs(sum(r["gflop"] for r in layers) - report["conv_gflop"]) <= 1e-3 * len(layers)
    assert report["conv_ms"] <= report["node_ms_sum"]
