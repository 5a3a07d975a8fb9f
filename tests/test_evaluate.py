"""Evaluation metrics on hand-made predictions (known accuracy, kappa, AUC)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mammo_density.train.metrics import (
    Prediction,
    build_levels,
    cohen_kappa,
    evaluate_predictions,
    format_table,
    roc_auc,
    write_report,
)


def onehot(i: int, n: int = 4, p: float = 0.7) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[i] = p
    return v


def exam(eid: str, truth: dict[str, str], pred: dict[str, int]) -> list[Prediction]:
    """Four views; ``pred`` maps slot -> predicted class index."""
    out = []
    for slot, cls in pred.items():
        lat, view = slot.split("-")
        out.append(Prediction(eid, lat, view, onehot(cls), truth[lat]))
    return out


def test_kappa_and_auc_match_torchmetrics():
    # imported here, not at collection: torchmetrics (with scipy) takes 1.5 s to import,
    # in each pytest-xdist worker
    from torchmetrics.functional.classification import binary_auroc, multiclass_cohen_kappa

    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 4, 200))
    ours = cohen_kappa(t, p, 4, weights="linear")
    ref = float(multiclass_cohen_kappa(torch.tensor(p), torch.tensor(t), num_classes=4,
                                       weights="linear"))
    assert ours == pytest.approx(ref, abs=1e-6)
    y = rng.integers(0, 2, 300)
    s = np.round(y * 0.3 + rng.random(300), 2)  # rounded: ties exercise mid-ranks
    assert roc_auc(y, s) == pytest.approx(float(binary_auroc(torch.tensor(s), torch.tensor(y))),
                                          abs=1e-6)


def test_known_values():
    # Perfect agreement -> kappa 1; AUC of perfectly separated scores -> 1; reversed -> 0.
    assert cohen_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(1.0)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    # Hand computed linear-weighted kappa: truth (0,0,1,1), pred (0,1,1,1):
    # observed disagreement 1/4; expected 0.5 * 0.75 + 0.5 * 0.25 = 1/2 -> kappa 1/2.
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)


def test_levels_follow_the_method():
    preds = (
        # exam 1: truth C both; all views right -> exam C
        exam("e1", {"R": "C", "L": "C"}, {"R-CC": 2, "L-CC": 2, "R-MLO": 2, "L-MLO": 2})
        # exam 2: truth R=B, L=C (exam C); right breast predicted B, left predicted C
        + exam("e2", {"R": "B", "L": "C"}, {"R-CC": 1, "L-CC": 2, "R-MLO": 1, "L-MLO": 2})
        # exam 3: truth A; R-CC wrong (D) but R-MLO A: breast mean -> tie... make L wrong too
        + exam("e3", {"R": "A", "L": "A"}, {"R-CC": 0, "L-CC": 3, "R-MLO": 0, "L-MLO": 3})
    )
    levels = build_levels(preds, "birads4")
    ex = levels["exam"]
    # exam class = denser breast: e1 C (right), e2 C (right), e3 D (wrong)
    assert ex.y_true.tolist() == [2, 2, 0]
    assert ex.y_pred.tolist() == [2, 2, 3]
    result = evaluate_predictions(preds, "birads4", n_boot=200)
    lv = result["levels"]
    assert lv["exam"]["accuracy"] == pytest.approx(2 / 3)
    assert lv["breast:R"]["accuracy"] == 1.0
    assert lv["breast:L"]["accuracy"] == pytest.approx(2 / 3)
    assert lv["view:L-CC"]["accuracy"] == pytest.approx(2 / 3)
    assert lv["exam"]["confusion"][0][3] == 1
    assert lv["exam"]["recall"]["C"] == 1.0 and lv["exam"]["recall"]["A"] == 0.0
    assert lv["exam"]["recall"]["B"] is None
    # dense/non-dense at exam level: e1 dense ok, e2 dense ok, e3 non-dense predicted dense
    assert lv["exam"]["dense_accuracy"] == pytest.approx(2 / 3)
    lo, hi = lv["exam"]["ci95"]["accuracy"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0
    assert "exam" in format_table(result)


def test_dense2_exam_is_mean_of_views():
    preds = []
    for slot, p in {"R-CC": 0.9, "L-CC": 0.9, "R-MLO": 0.2, "L-MLO": 0.2}.items():
        lat, view = slot.split("-")
        preds.append(Prediction("e", lat, view, np.array([1 - p, p]), "C"))
    lv = build_levels(preds, "dense2")
    assert lv["exam"].y_pred.tolist() == [1]  # mean 0.55
    assert lv["exam"].dense_score[0] == pytest.approx(0.55)


def test_report_files(tmp_path):
    rng = np.random.default_rng(1)
    preds = []
    for i in range(12):
        t = "ABCD"[i % 4]
        preds += exam(f"e{i}", {"R": t, "L": t},
                      {s: int(rng.integers(0, 4)) for s in ("R-CC", "L-CC", "R-MLO", "L-MLO")})
    result = evaluate_predictions(preds, "birads4", n_boot=50)
    paths = write_report(result, tmp_path)
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["levels"]["exam"]["n"] == 12
    assert (tmp_path / "confusion_exam.png").stat().st_size > 1000
    rows = (tmp_path / "confusion_exam.csv").read_text().splitlines()
    assert rows[0].endswith("A,B,C,D") and len(rows) == 5
    assert "table" in paths
