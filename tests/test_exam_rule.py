"""``evaluate`` measures the rule that is deployed: on random studies, the exam class and
P(dense) of train/metrics.py equal those of worker/combine.py (both call
mammo_density.study.exam)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mammo_density.study.slots import SLOTS, split_slot
from mammo_density.train.metrics import Prediction, build_levels
from mammo_density.worker.combine import combine

BIRADS = ("A", "B", "C", "D")

# Small integer weights make ties between classes, and between breasts, common.
_weights = st.lists(st.integers(0, 4), min_size=4, max_size=4).filter(lambda w: sum(w) > 0)
_study = st.dictionaries(st.sampled_from(SLOTS), _weights, min_size=1, max_size=4)


def _probs(weights: list[int]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


@settings(max_examples=300, deadline=None)
@given(studies=st.lists(_study, min_size=1, max_size=6))
def test_evaluate_exam_equals_the_deployed_rule_birads4(studies) -> None:
    preds = []
    deployed = []
    for i, study in enumerate(studies):
        probs = {slot: _probs(w) for slot, w in study.items()}
        exam = combine(probs).exam
        deployed.append((BIRADS.index(exam.category), exam.p_dense))
        for slot, p in probs.items():
            lat, view = split_slot(slot)
            preds.append(Prediction(exam_id=f"e{i:03d}", laterality=lat, view=view, probs=p,
                                    density="A"))
    level = build_levels(preds, "birads4")["exam"]
    measured = list(zip(level.y_pred.tolist(), level.dense_score.tolist(), strict=True))
    assert [c for c, _ in measured] == [c for c, _ in deployed]
    assert np.allclose([p for _, p in measured], [p for _, p in deployed], rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(studies=st.lists(st.dictionaries(st.sampled_from(SLOTS), st.integers(0, 8),
                                        min_size=1, max_size=4), min_size=1, max_size=6))
def test_evaluate_exam_equals_the_deployed_rule_dense2(studies) -> None:
    preds = []
    deployed = []
    for i, study in enumerate(studies):
        p_dense = {slot: k / 8 for slot, k in study.items()}  # 0.5 exactly is common
        exam = combine({s: [0.25] * 4 for s in study}, dense_probs=p_dense).exam
        assert exam.dense_source == "dense2"
        deployed.append((int(exam.dense), exam.p_dense))
        for slot, p in p_dense.items():
            lat, view = split_slot(slot)
            preds.append(Prediction(exam_id=f"e{i:03d}", laterality=lat, view=view,
                                    probs=np.array([1 - p, p]), density="A"))
    level = build_levels(preds, "dense2")["exam"]
    assert level.y_pred.tolist() == [d for d, _ in deployed]
    assert np.allclose(level.dense_score, [p for _, p in deployed], rtol=0, atol=1e-12)
