"""INT8 variant: `mammo-density quantize` on the bundled demo model (128 px, fast), the
manifest's listing and sha256, the parity report, and how the worker loads the variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mammo_density.cli import main
from mammo_density.manifest import read_manifest, sha256_file, write_manifest
from mammo_density.synth import generate
from mammo_density.views import SLOTS
from mammo_density.worker.models import ModelError, ModelSet, default_model_dir


@pytest.fixture(scope="module")
def quantised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the demo model with its int8 variant and a parity report on 12 labelled
    synthetic studies (another seed than the calibration's)."""
    root = tmp_path_factory.mktemp("int8")
    entry = root / "demo"
    shutil.copytree(default_model_dir(), entry)
    generate(root / "labelled", studies=12, seed=2, size="small")
    code = main(["quantize", "--model-dir", str(entry), "--calibration-studies", "3",
                 "--parity", str(root / "labelled" / "manifest.csv"),
                 "--label-column", "true_density", "--cache-dir", str(root / "cache"),
                 "--report", str(root / "parity.json")])
    report = json.loads((root / "parity.json").read_text())
    assert code == (0 if report["holds"] else 3)
    return entry, report


def test_manifest_lists_int8_files_with_sha256(quantised):
    entry, _ = quantised
    manifest = read_manifest(entry)
    assert set(manifest.variants["int8"]) == set(SLOTS)
    for slot, filename in manifest.variants["int8"].items():
        assert filename == manifest.views[slot].replace(".onnx", ".int8.onnx")
        assert manifest.files_sha256[filename] == sha256_file(entry / filename)
        # the fp32 files are untouched and still listed
        assert manifest.files_sha256[manifest.views[slot]] == \
            sha256_file(default_model_dir() / manifest.views[slot])
    assert manifest.metrics["int8_parity"]["exams"] == 12


def test_parity_report_figures(quantised):
    _, report = quantised
    assert report["exams"] == 12 and report["images"] == 48
    for level in ("exam", "breast"):
        figures = report[level]
        assert 0.0 <= figures["agreement"] <= 1.0
        assert figures["accuracy_change"] == pytest.approx(
            figures["accuracy_int8"] - figures["accuracy_fp32"], abs=2e-4)
        assert figures["kappa_change"] == pytest.approx(
            figures["kappa_int8"] - figures["kappa_fp32"], abs=2e-4)
    # the fp32 side is the demo model's own accuracy level on synthetic studies
    assert report["exam"]["accuracy_fp32"] >= 0.75
    rule = report["rule"]
    assert report["holds"] == (
        report["exam"]["agreement"] >= rule["min_exam_agreement"]
        and report["exam"]["accuracy_change"] >= -rule["max_accuracy_drop"]
        and report["exam"]["kappa_change"] >= -rule["max_kappa_drop"])


def test_int8_variant_runs_close_to_fp32(quantised):
    from mammo_density.worker.preprocess import load_model_input

    entry, _ = quantised
    fp32 = ModelSet.load(entry)
    int8 = ModelSet.load(entry, variant="int8", check_parity=False)
    assert int8.ref().version == fp32.ref().version + "+int8"
    assert fp32.ref().version == read_manifest(entry).version
    files = sorted((entry.parent / "labelled").rglob("*.dcm"))[:8]
    diffs = []
    for path in files:
        x = load_model_input(path, fp32.input_size)[None]
        for slot in SLOTS:
            a, b = fp32.predict(slot, x)[0], int8.predict(slot, x)[0]
            assert np.isclose(b.sum(), 1.0, atol=1e-4)  # softmax kept in fp32
            diffs.append(np.abs(a - b).max())
    # real (synthetic) mammograms: close to fp32 on average, not bit-identical
    assert 0 < float(np.mean(diffs)) < 0.1


def test_worker_refuses_failed_parity_and_tampered_files(quantised, tmp_path):
    entry, _ = quantised
    copy = tmp_path / "copy"
    shutil.copytree(entry, copy)
    manifest = read_manifest(copy)
    manifest.metrics["int8_parity"] = {**manifest.metrics["int8_parity"], "holds": False}
    write_manifest(copy, manifest)
    with pytest.raises(ModelError, match="failed its parity check"):
        ModelSet.load(copy, variant="int8")
    ModelSet.load(copy)  # fp32 still loads
    manifest.metrics["int8_parity"]["holds"] = True
    write_manifest(copy, manifest)
    ModelSet.load(copy, variant="int8")
    victim = copy / manifest.variants["int8"]["L-MLO"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        ModelSet.load(copy, variant="int8")
    with pytest.raises(ModelError, match="no int8 variant"):
        ModelSet.load(default_model_dir(), variant="int8")
