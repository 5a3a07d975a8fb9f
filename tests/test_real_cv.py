"""benchmarks/real_cv.py: every method on the same folds, once per split seed, and the
summary over several split seeds."""

from __future__ import annotations

import json

import pytest

from benchmarks import real_cv
from tests.train_helpers import tiny_manifest


def _rows(acc: dict[str, float], kappa: dict[str, float]) -> dict[str, dict]:
    """One split's rows as real_cv keeps them, image level only; no image is truly C."""
    return {name: {"summary": {"image": {"accuracy": a, "kappa_linear": kappa[name],
                                         "kappa_quadratic": kappa[name] + 0.1,
                                         "recall": {"A": a, "C": None, "D": 1 - a}}}}
            for name, a in acc.items()}


def test_summary_over_splits_is_the_mean_and_the_paired_difference():
    per_split = {
        0: _rows({"features+LR": 0.60, "cnn": 0.58}, {"features+LR": 0.50, "cnn": 0.52}),
        1: _rows({"features+LR": 0.56, "cnn": 0.50}, {"features+LR": 0.48, "cnn": 0.47}),
        2: {**_rows({"features+LR": 0.61, "cnn": 0.60}, {"features+LR": 0.51, "cnn": 0.55}),
            "probe": {"summary": {}}},  # scored on one split only: not summarised
    }
    s = real_cv.summarise_splits(per_split)
    assert set(s) == {"features+LR", "cnn"}
    cnn = s["cnn"]["image"]
    assert cnn["accuracy"] == pytest.approx((0.58 + 0.50 + 0.60) / 3)
    assert cnn["accuracy_range"] == pytest.approx([0.50, 0.60])
    assert cnn["accuracy_vs_features+LR"] == pytest.approx((-0.02 - 0.06 - 0.01) / 3)
    assert cnn["accuracy_vs_features+LR_range"] == pytest.approx([-0.06, -0.01])
    assert cnn["kappa_linear_vs_features+LR"] == pytest.approx((0.02 - 0.01 + 0.04) / 3)
    assert cnn["recall"]["D"] == pytest.approx(1 - (0.58 + 0.50 + 0.60) / 3)
    assert cnn["recall"]["C"] is None  # no C image in any split
    assert "accuracy_vs_features+LR" not in s["features+LR"]["image"]
    table = real_cv.format_splits_table(s, [0, 1, 2]).splitlines()
    assert table[2].startswith("| features+LR | image | 59.0 [56.0, 61.0] | 0.497")
    assert "| -3.0 / +0.017 [-6.0, -1.0] |" in table[3]


def test_export_needs_one_split(tmp_path, capsys):
    with pytest.raises(SystemExit):
        real_cv.main(["--manifest", str(tmp_path / "m.csv"), "--split-seed", "0,1",
                      "--export", "x"])
    assert "one --split-seed" in capsys.readouterr().err


@pytest.mark.slow
def test_two_split_seeds_run_everything_twice_and_summarise(tmp_path):
    manifest = tiny_manifest(tmp_path / "synth", studies=6, seed=6)
    out = tmp_path / "cv"
    opts = ("--recipe small-real --epochs 1 --max-steps-per-epoch 1 --width 4 "
            "--batch-size 4 --val-fraction 0.25 --bn-recalibrate 0")
    assert real_cv.main(["--manifest", str(manifest), "--out", str(out), "--k", "2",
                         "--split-seed", "0,1", "--input-size", "32", "--threads", "1",
                         "--device", "cpu", "--variant", f"small={opts}"]) == 0
    report = json.loads((out / "real_cv.json").read_text())
    assert report["split_seed"] == [0, 1]
    for seed in (0, 1):
        one = json.loads((out / f"split-{seed}" / "real_cv.json").read_text())
        assert one["split_seed"] == seed and one["complete"]
        assert report["splits"][str(seed)] == one["rows"]
    # the splits differ (other women in each test fold), and the summary is their mean
    folds = [json.loads((out / f"split-{s}" / "small" / "cv.json").read_text())
             for s in (0, 1)]
    assert [f["exams"] for f in folds[0]["folds"]] != [] and folds[0] != folds[1]
    acc = [report["splits"][s]["small"]["summary"]["image"]["accuracy"] for s in ("0", "1")]
    assert report["summary"]["small"]["image"]["accuracy"] == pytest.approx(sum(acc) / 2)
    assert {"majority", "features+LR", "small", "small+LR"} <= set(report["summary"])
    assert (out / "cache").is_dir()  # one image cache for both splits
    assert "over 2 split seeds" in (out / "real_cv.md").read_text()
