"""Export: ONNX parity, registry entry with sha256s; CLI train -> export -> evaluate."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mammo_density.cli import main as cli_main
from mammo_density.manifest import read_manifest, sha256_file
from mammo_density.train.data import read_manifest_csv
from mammo_density.train.evaluation import predict_checkpoints, predict_registry
from mammo_density.train.export import ExportParityError, export_onnx, export_run
from mammo_density.train.model import DensityResNet
from tests.train_helpers import tiny_manifest, train_argv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny four-view run (1 epoch) through the CLI."""
    base = tmp_path_factory.mktemp("export")
    manifest = tiny_manifest(base / "synth")
    run = base / "run"
    assert cli_main(["train", *train_argv(manifest, run, "--view", "all", "--epochs", "1",
                                          "--no-tensorboard")]) == 0
    return manifest, run


def test_export_parity_and_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = DensityResNet(width=4).eval()
    diff = export_onnx(model, tmp_path / "m.onnx", 48)
    assert diff <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 1, 48, 48)).astype(np.float32)
    got = sess.run(["probabilities"], {"image": x})[0]
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    assert got.shape == (5, 4) and np.abs(got - ref).max() <= 1e-4
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ExportParityError):
        export_onnx(model, tmp_path / "n.onnx", 48, tolerance=-1.0)


def test_export_run_writes_verified_entry(trained, tmp_path):
    manifest_csv, run = trained
    out = tmp_path / "entry"
    m = export_run(run, out, name="tiny", version="0.0.1", not_for_clinical_use=True,
                   training_data="tiny synthetic", commands=["mammo-density train ..."])
    assert set(m.views) == {"R-CC", "L-CC", "R-MLO", "L-MLO"}
    again = read_manifest(out)
    for fname, digest in again.files_sha256.items():
        assert sha256_file(out / fname) == digest
    assert again.not_for_clinical_use and again.input_size == 32
    assert again.architecture["conv_layers"] == 41
    assert max(again.metrics["export_parity_max_abs_diff"].values()) <= 1e-4
    ckpt = torch.load(run / "R-CC" / "best.pth", map_location="cpu", weights_only=False)
    assert again.normalisation.mean == pytest.approx(ckpt["normalisation"]["mean"])
    # the identity convs for ONNX Runtime's CPU path: counted, and named in the card
    assert again.metrics["cpu_fusion_identity_convs"] == dict.fromkeys(
        ["R-CC", "L-CC", "R-MLO", "L-MLO"], 12)
    card = (out / "MODEL_CARD.md").read_text()
    assert "identity 1x1 depthwise convolutions" in card and "R-CC 12" in card
    # The ONNX entry and the checkpoints predict the same on the same images.
    records = read_manifest_csv(manifest_csv)
    p_onnx, _ = predict_registry(out, records, cache_dir=tmp_path / "c")
    p_torch, _ = predict_checkpoints(run, records, cache_dir=tmp_path / "c")
    key = lambda p: (p.exam_id, p.slot)  # noqa: E731
    a = np.stack([p.probs for p in sorted(p_onnx, key=key)])
    b = np.stack([p.probs for p in sorted(p_torch, key=key)])
    assert a.shape == (len(records), 4) and np.abs(a - b).max() <= 1e-4


def test_cli_export_and_evaluate(trained, tmp_path, capsys):
    manifest_csv, run = trained
    ev = tmp_path / "ev"
    assert cli_main(["evaluate", "--manifest", str(manifest_csv), "--run", str(run),
                     "--split", "all", "--bootstrap", "20", "--out", str(ev)]) == 0
    assert "exam" in capsys.readouterr().out
    entry = tmp_path / "entry"
    assert cli_main(["export", "--run", str(run), "--out", str(entry), "--name", "t",
                     "--metrics", str(ev / "metrics.json"), "--not-for-clinical-use",
                     "--command", "mammo-density train ..."]) == 0
    assert "ONNX Runtime vs PyTorch" in capsys.readouterr().out
    m = read_manifest(entry)
    assert "exam_accuracy" in m.metrics and m.commands == ["mammo-density train ..."]
    assert cli_main(["evaluate", "--manifest", str(manifest_csv), "--model-dir", str(entry),
                     "--split", "all", "--bootstrap", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["levels"]["exam"]["accuracy"] == pytest.approx(
        json.loads((ev / "metrics.json").read_text())["levels"]["exam"]["accuracy"])
    # checkpoints on the device a site names (auto: CUDA where there is one)
    assert cli_main(["evaluate", "--manifest", str(manifest_csv), "--run", str(run),
                     "--split", "all", "--bootstrap", "0", "--device", "auto", "--json"]) == 0
    on_device = json.loads(capsys.readouterr().out)
    assert on_device["levels"]["image"]["accuracy"] == pytest.approx(
        json.loads((ev / "metrics.json").read_text())["levels"]["image"]["accuracy"])


def test_fp16_export(tmp_path):
    pytest.importorskip("onnxruntime.transformers.float16")
    torch.manual_seed(0)
    diff = export_onnx(DensityResNet(width=4).eval(), tmp_path / "h.onnx", 32, fp16=True)
    assert diff <= 1e-2
