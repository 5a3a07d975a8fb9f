"""Screening rules on hand-built results."""

from __future__ import annotations

import pytest

from mammo_density.config import load_settings
from mammo_density.result import (
    BreastDose,
    BreastResult,
    DoseSummary,
    ExamResult,
    ModelRef,
    Recommendation,
    StudyResult,
    ViewDose,
)
from mammo_density.worker.screening_rules import evaluate, reference_agd_mgy

_PROBS = {"A": {"A": 0.7, "B": 0.2, "C": 0.05, "D": 0.05},
          "B": {"A": 0.2, "B": 0.6, "C": 0.15, "D": 0.05},
          "C": {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2},
          "D": {"A": 0.02, "B": 0.08, "C": 0.2, "D": 0.7}}


def make_result(uid: str = "1.2.826.0.1.3680043.8.498.1", *, right: str = "B", left: str = "B",
                agd: float = 1.2, thickness: float = 50.0, revision: int = 1,
                partial: bool = False, study_date: str = "20240105",
                model_sha: str = "ab" * 32) -> StudyResult:
    """A complete result: two breasts, four views' dose, one model."""
    order = "ABCD"
    exam_cat = max(right, left, key=order.index)
    p_dense = (_PROBS[exam_cat]["C"] + _PROBS[exam_cat]["D"])
    views = [ViewDose(laterality=s, view=v, sop_instance_uid=f"{uid}.{i}", agd_mgy=agd,
                      thickness_mm=thickness, force_n=90.0, kvp=29.0, exposure_uas=60000.0)
             for i, (s, v) in enumerate([("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")])]
    breasts = {s: BreastDose(agd_mgy=2 * agd, agd_source="headers", mean_thickness_mm=thickness,
                             mean_force_n=90.0, exposures=2) for s in ("R", "L")}
    return StudyResult(
        study_instance_uid=uid, revision=revision, study_date=study_date,
        exam=ExamResult(category=exam_cat, probabilities=_PROBS[exam_cat],
                        dense=exam_cat in "CD", p_dense=p_dense, dense_source="birads4"),
        breasts={"R": BreastResult(category=right, probabilities=_PROBS[right],
                                   views=["R-CC", "R-MLO"]),
                 "L": BreastResult(category=left, probabilities=_PROBS[left],
                                   views=["L-CC", "L-MLO"])},
        partial=partial, missing_views=["L-MLO"] if partial else [],
        model=ModelRef(name="demo", version="0.1", sha256=model_sha, not_for_clinical_use=True),
        dose=DoseSummary(views=views, breasts=breasts, total_agd_mgy=4 * agd,
                         sources=["headers"]),
    )


def _settings(tmp_path, **kw):
    return load_settings(data_dir=tmp_path, **kw)


def test_reference_table_scaling():
    # At 45 mm the reference is the setting itself; the EUREF shape around it.
    assert reference_agd_mgy(45, 2.0) == pytest.approx(2.0)
    assert reference_agd_mgy(53, 2.0) == pytest.approx(2.5)
    assert reference_agd_mgy(21, 2.0) == pytest.approx(1.0)
    assert reference_agd_mgy(90, 2.0) == pytest.approx(6.5)
    assert reference_agd_mgy(45, 2.5) == pytest.approx(2.5)
    assert reference_agd_mgy(60, 2.5) == pytest.approx(3.0 * 2.5 / 2.0)
    assert reference_agd_mgy(38.5, 2.0) == pytest.approx(1.75)  # halfway 32-45 mm
    assert reference_agd_mgy(10, 2.0) == pytest.approx(1.0)     # held below 21 mm
    assert reference_agd_mgy(120, 2.0) == pytest.approx(6.5)    # held above 90 mm


def test_non_dense_normal_dose_gives_nothing(tmp_path):
    assert evaluate(make_result(right="B", left="A"), _settings(tmp_path)) == []


@pytest.mark.parametrize("cat", ["C", "D"])
def test_dense_suggests_supplemental_imaging(tmp_path, cat):
    recs = evaluate(make_result(right=cat, left="B"), _settings(tmp_path))
    assert [r.rule for r in recs] == ["dense"]
    assert recs[0].severity == "warning"
    assert "supplemental imaging" in recs[0].text and f"right {cat}" in recs[0].text


def test_dense_categories_configurable(tmp_path):
    settings = _settings(tmp_path, dense_categories="D")
    assert evaluate(make_result(right="C"), settings) == []
    assert [r.rule for r in evaluate(make_result(right="D"), settings)] == ["dense"]


def test_dose_above_reference_by_thickness(tmp_path):
    settings = _settings(tmp_path, dose_reference_mgy=2.0)
    # 2.4 mGy at 50 mm: reference there is 2.0 + 0.5 * 5/8 = 2.3125 -> above.
    recs = evaluate(make_result(agd=2.4, thickness=50), settings)
    assert [r.rule for r in recs] == ["dose_reference"] * 4
    assert "2.31 mGy" in recs[0].text and "R-CC" in recs[0].text
    # Same dose on a thicker breast (75 mm, reference 4.5 mGy): fine.
    assert evaluate(make_result(agd=2.4, thickness=75), settings) == []


def test_partial_study_info(tmp_path):
    recs = evaluate(make_result(partial=True), _settings(tmp_path))
    assert [(r.rule, r.severity) for r in recs] == [("partial", "info")]
    assert "L-MLO" in recs[0].text


def test_custom_rule_and_failing_rule(tmp_path):
    settings = _settings(tmp_path, screening_rules=(
        "tests.test_rules:_custom_rule,tests.test_rules:_broken_rule,dense"))
    recs = evaluate(make_result(right="D"), settings)
    assert [r.rule for r in recs] == ["custom", "dense"]


def test_unknown_rule_is_skipped(tmp_path):
    recs = evaluate(make_result(right="D"), _settings(tmp_path, screening_rules="nope,dense"))
    assert [r.rule for r in recs] == ["dense"]


def _custom_rule(result, settings):
    return Recommendation(rule="custom", text=f"revision {result.revision}")


def _broken_rule(result, settings):
    raise RuntimeError("bug in a site's rule")
