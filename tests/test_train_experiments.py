"""The method's experiments as commands: input-size sweep and k-fold cross-validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammo_density.cli import main as cli_main
from mammo_density.train.experiments import parse_range
from tests.train_helpers import tiny_manifest, train_argv


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.mktemp("synth"), studies=6, seed=6)


def test_parse_range():
    assert parse_range("250:850:100") == [250, 350, 450, 550, 650, 750, 850]
    assert parse_range("32,48") == [32, 48]
    with pytest.raises(ValueError):
        parse_range("850:250:100")


@pytest.mark.slow
def test_input_size_sweep_writes_the_methods_table(manifest, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = train_argv(manifest, out, "--epochs", "1", "--no-tensorboard",
                      "--max-steps-per-epoch", "1", "--sweep-sizes", "32,40")
    argv[argv.index("--test-fraction") + 1] = "0.3"
    assert cli_main(["train", *argv]) == 0
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0] == "| input | 32 | 40 |"
    assert [row.split("|")[1].strip() for row in table[2:]] == \
        ["right breast", "left breast", "all views"]
    data = json.loads((out / "sweep.json").read_text())
    assert data["32"]["levels"]["exam"]["n"] >= 1
    assert (out / "size-40" / "eval-test" / "confusion_exam.png").exists()


@pytest.mark.slow
def test_cross_validation_reports_mean_and_spread(manifest, tmp_path, capsys):
    out = tmp_path / "cv"
    argv = train_argv(manifest, out, "--epochs", "1", "--no-tensorboard",
                      "--max-steps-per-epoch", "1", "--cv", "2")
    assert cli_main(["train", *argv]) == 0
    cv = json.loads((out / "cv.json").read_text())
    assert cv["k"] == 2 and len(cv["folds"]) == 2
    assert "accuracy_std" in cv["summary"]["exam"]
    # every exam is tested exactly once over the folds
    assert sum(f["exams"] for f in cv["folds"]) == 6
    assert "accuracy" in capsys.readouterr().out


def test_late_fusion_matches_images_by_slot_and_averages():
    from mammo_density.train.experiments import fuse_predictions
    from mammo_density.train.metrics import Prediction

    def pred(exam, side, view, probs, density="B"):
        return Prediction(exam_id=exam, laterality=side, view=view,
                          probs=np.asarray(probs, dtype=float), density=density)

    a = [pred("e1", "R", "MLO", [1, 0, 0, 0]), pred("e1", "L", "CC", [0, 1, 0, 0]),
         pred("e2", "R", "CC", [0, 0, 1, 0]), pred("e2", "R", "CC", [0, 0, 0, 1])]
    # other order; e2 holds two R-CC images (a retake), kept in the same order
    b = [pred("e2", "R", "CC", [0, 0, 0, 1]), pred("e1", "L", "CC", [0, 0, 1, 0]),
         pred("e2", "R", "CC", [1, 0, 0, 0]), pred("e1", "R", "MLO", [0, 1, 0, 0])]
    fused = fuse_predictions(a, b)
    assert [(p.exam_id, p.slot) for p in fused] == [(p.exam_id, p.slot) for p in a]
    np.testing.assert_allclose(np.stack([p.probs for p in fused]),
                               [[.5, .5, 0, 0], [0, .5, .5, 0], [0, 0, .5, .5],
                                [.5, 0, 0, .5]])
    np.testing.assert_allclose(fuse_predictions(a, b, weight=1.0)[3].probs, [0, 0, 0, 1])
    with pytest.raises(ValueError, match="not the same images"):
        fuse_predictions(a[:3], b)
    with pytest.raises(ValueError, match="no second prediction"):
        fuse_predictions(a, b[1:])
