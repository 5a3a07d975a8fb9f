"""The bundled demo model: verified registry entry, not for clinical use, small, working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammo_density.manifest import read_manifest, sha256_file
from mammo_density.views import SLOTS

DEMO = Path(__file__).resolve().parents[1] / "onnx_models" / "demo-synthetic-birads4"


@pytest.fixture(scope="module")
def manifest():
    if not (DEMO / "manifest.json").exists():
        pytest.fail(f"the demo model is missing from {DEMO}")
    return read_manifest(DEMO)


def test_manifest_verifies_and_says_not_for_clinical_use(manifest):
    assert manifest.not_for_clinical_use is True
    assert "not for clinical use" in manifest.training_data.lower()
    assert "synthetic" in manifest.training_data.lower()
    assert manifest.task == "birads4" and set(manifest.views) == set(SLOTS)
    for fname, digest in manifest.files_sha256.items():
        assert sha256_file(DEMO / fname) == digest, fname
    from mammo_density.worker.preprocess import PREPROCESSING_VERSION

    assert manifest.preprocessing_version == PREPROCESSING_VERSION
    assert manifest.commands and any("train" in c for c in manifest.commands)
    card = (DEMO / "MODEL_CARD.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and "seed" in card


def test_demo_model_is_small():
    total = sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file())
    assert total < 25 * 2**20


def test_default_model_dir_is_the_demo():
    from mammo_density.worker.models import default_model_dir

    assert default_model_dir().resolve() == DEMO.resolve() or \
        default_model_dir().name == DEMO.name


HELD_OUT_SEED = 2  # the manifest's held-out set: "seed 2, 150 studies, small size"
RECHECKED = 24


def test_demo_model_classifies_held_out_synthetic_studies(tmp_path, manifest):
    """The manifest's exam accuracy, recomputed: through the worker's ModelSet and the
    shared preprocessing on the first studies of its held-out set (each study depends
    only on seed and index, so they are the same studies). A subset cannot hold more
    wrong exams than the whole set, so the claim bounds the errors found here."""
    from mammo_density.synth.generate import generate
    from mammo_density.train.data import read_manifest_csv
    from mammo_density.train.evaluation import predict_registry
    from mammo_density.train.metrics import evaluate_predictions

    assert f"seed {HELD_OUT_SEED}, " in manifest.training_data
    claimed = manifest.metrics["exam_accuracy"]
    exams = int(manifest.metrics["exams"])
    assert claimed >= 0.85, "the demo model should stay a working example"
    generate(tmp_path / "s", studies=RECHECKED, seed=HELD_OUT_SEED, size="small")
    records = read_manifest_csv(tmp_path / "s" / "manifest.csv", label_column="true_density")
    preds, info = predict_registry(DEMO, records)
    assert len(preds) == 4 * RECHECKED and info["input_size"] == manifest.input_size
    np.testing.assert_allclose([p.probs.sum() for p in preds], 1.0, atol=1e-4)
    result = evaluate_predictions(preds, "birads4", n_boot=0)
    accuracy = result["levels"]["exam"]["accuracy"]
    wrong_here = round((1.0 - accuracy) * RECHECKED)
    wrong_claimed = round((1.0 - claimed) * exams)
    assert wrong_here <= wrong_claimed, (
        f"{wrong_here} of {RECHECKED} held-out exams wrong; the manifest's "
        f"{claimed:.3f} on {exams} allows {wrong_claimed} in the whole set")
