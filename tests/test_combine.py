"""The method's combination rules on hand-made probability arrays."""

from __future__ import annotations

import pytest

from mammo_density.worker.combine import combine, denser_argmax


def p(a, b, c, d):
    return [a, b, c, d]


FATTY = p(0.7, 0.2, 0.05, 0.05)
SCATTERED = p(0.1, 0.6, 0.2, 0.1)
HETERO = p(0.05, 0.15, 0.6, 0.2)
EXTREME = p(0.0, 0.05, 0.15, 0.8)


def test_denser_breast_wins():
    res = combine({"R-CC": FATTY, "R-MLO": FATTY, "L-CC": HETERO, "L-MLO": HETERO})
    assert res.breasts["R"].category == "A"
    assert res.breasts["L"].category == "C"
    assert res.exam.category == "C"
    # exam probabilities: mean of the four views
    assert res.exam.probabilities["A"] == pytest.approx((0.7 * 2 + 0.05 * 2) / 4)
    assert sum(res.exam.probabilities.values()) == pytest.approx(1.0)
    # the exam mean argmax is A/C-ish, but the rule takes the denser breast
    assert res.breasts["R"].views == ["R-CC", "R-MLO"]
    assert not res.partial and res.missing_views == []


def test_breast_mean_of_its_two_views():
    res = combine({"R-CC": SCATTERED, "R-MLO": EXTREME, "L-CC": FATTY, "L-MLO": FATTY})
    right = res.breasts["R"].probabilities
    assert right["D"] == pytest.approx((0.1 + 0.8) / 2)
    assert res.breasts["R"].category == "D"  # 0.45 D vs 0.325 B
    assert res.exam.category == "D"


def test_ties_go_to_the_denser_class():
    assert denser_argmax([0.4, 0.4, 0.1, 0.1]) == 1
    assert denser_argmax([0.25, 0.25, 0.25, 0.25]) == 3
    res = combine({"R-CC": p(0.5, 0.5, 0, 0), "L-CC": p(0.5, 0.5, 0, 0)},
                  expected_slots=("R-CC", "L-CC"))
    assert res.breasts["R"].category == "B" and res.exam.category == "B"
    # within a breast two views disagree exactly: B and C tie -> C
    res = combine({"R-CC": p(0, 1, 0, 0), "R-MLO": p(0, 0, 1, 0)})
    assert res.breasts["R"].category == "C"


def test_dense_from_birads4_with_threshold_tie():
    res = combine({"R-CC": p(0.25, 0.25, 0.25, 0.25), "L-CC": p(0.25, 0.25, 0.25, 0.25)})
    assert res.exam.dense_source == "birads4"
    assert res.exam.p_dense == pytest.approx(0.5)
    assert res.exam.dense is True
    res = combine({"R-CC": FATTY, "L-CC": FATTY})
    assert res.exam.p_dense == pytest.approx(0.1) and res.exam.dense is False
    assert res.breasts["R"].p_dense == pytest.approx(0.1)


def test_dense_from_birads4_follows_the_denser_breast():
    """Right C, left clearly B: the mean of four views is non-dense, the exam is C.

    The report must not say "C" and "non-dense" side by side: dense follows the exam
    class and P(dense) is the denser breast's P(C) + P(D)."""
    right = p(0.05, 0.40, 0.45, 0.10)
    left = p(0.0, 0.9, 0.1, 0.0)
    res = combine({"R-CC": right, "R-MLO": right, "L-CC": left, "L-MLO": left})
    exam_mean_dense = (0.55 + 0.1) / 2
    assert exam_mean_dense < 0.5
    assert res.exam.category == "C" and res.breasts["L"].category == "B"
    assert res.exam.dense is True
    assert res.exam.p_dense == pytest.approx(0.55)
    both_b = combine({"R-CC": left, "L-CC": p(0.1, 0.6, 0.3, 0.0)},
                     expected_slots=("R-CC", "L-CC"))
    assert both_b.exam.category == "B" and both_b.exam.dense is False
    assert both_b.exam.p_dense == pytest.approx(0.3)


def test_dense_from_dense2_set_when_present():
    views = {"R-CC": FATTY, "R-MLO": FATTY, "L-CC": FATTY, "L-MLO": FATTY}
    dense = {"R-CC": 0.9, "R-MLO": 0.7, "L-CC": 0.6, "L-MLO": 0.4}
    res = combine(views, dense_probs=dense)
    assert res.exam.dense_source == "dense2"
    assert res.exam.p_dense == pytest.approx(0.65) and res.exam.dense
    assert res.breasts["R"].p_dense == pytest.approx(0.8)
    assert res.breasts["L"].p_dense == pytest.approx(0.5)


def test_partial_study_uses_what_is_there():
    res = combine({"R-CC": HETERO, "L-CC": FATTY, "L-MLO": SCATTERED})
    assert res.partial and res.missing_views == ["R-MLO"]
    assert res.breasts["R"].views == ["R-CC"] and res.breasts["R"].category == "C"
    assert res.exam.category == "C"
    # one breast missing entirely: absent from breasts
    res = combine({"L-CC": EXTREME, "L-MLO": HETERO})
    assert set(res.breasts) == {"L"}
    assert res.missing_views == ["R-CC", "R-MLO"]
    assert res.exam.category == "D"


def test_no_views_is_not_assessable():
    res = combine({})
    assert res.exam is None and not res.assessable
    assert res.partial and res.missing_views == ["R-CC", "L-CC", "R-MLO", "L-MLO"]
    assert res.breasts == {}


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 4"):
        combine({"R-CC": [0.5, 0.5]})
    with pytest.raises(ValueError, match="sum to"):
        combine({"R-CC": [0.5, 0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="unknown view"):
        combine({"R-XCCL": FATTY})
    with pytest.raises(ValueError, match="not finite"):
        combine({"R-CC": [float("nan"), 0.5, 0.25, 0.25]})


def test_exam_p_dense_is_the_winning_breasts_not_the_highest():
    """R is C with P(C)+P(D) = 0.60; L is B although its P(C)+P(D) = 0.65: the exam is C
    and its P(dense) is R's 0.60 (the breast that gave the class), not the higher 0.65."""
    r = [0.0, 0.4, 0.6, 0.0]
    l_ = [0.0, 0.35, 0.33, 0.32]
    exam = combine({"R-CC": r, "R-MLO": r, "L-CC": l_, "L-MLO": l_}).exam
    assert exam.category == "C" and exam.dense
    assert exam.p_dense == pytest.approx(0.60)
