"""The Orthanc plugin's plain functions, without Orthanc.

Module under test: plugin/orthanc/mammo_density_routing.py.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammo_density.plugin.orthanc import mammo_density_routing as logic
from mammo_density.views import SLOTS, view_info
from mammo_density.worker.sr import build_density_sr, read_density_sr
from tests import mgdata, srdata
from tests.orthanc_json import simplify

PLUGIN_DIR = Path(logic.__file__).resolve().parent


def settings(**section) -> logic.PluginSettings:
    return logic.parse_settings({"MammoDensity": {"Modality": "AI", **section}})


# --- the plugin folder stays stdlib + orthanc ----------------------------------------------


@pytest.mark.parametrize("name", ["mammo_density_routing.py", "mammo_density_orthanc.py"])
def test_plugin_files_import_only_stdlib_and_orthanc(name: str) -> None:
    import sys

    tree = ast.parse((PLUGIN_DIR / name).read_text())
    allowed = set(sys.stdlib_module_names) | {"orthanc", "mammo_density_routing", "__future__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import breaks inside Orthanc"
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in allowed, f"{name} imports {root}, not available inside Orthanc"


# --- settings ----------------------------------------------------------------------------


def test_settings_defaults_and_values() -> None:
    s = logic.parse_settings({"MammoDensity": {"Modality": "MAMMO"}, "StableAge": 15})
    assert s.modality == "MAMMO"
    assert s.forward_on_four_views is True
    assert s.forward_each_image is True
    assert s.recovery_delay_seconds == 15.0
    assert settings(ForwardEachImage=True).as_dict()["ForwardEachImage"] is True
    s = settings(ForwardOnFourViews=False, RetrySeconds=0.5, MaxRetries=3,
                 ForwardDoseReports=True, Metadata="4300", GlobalProperty=5000)
    assert (s.forward_on_four_views, s.retry_seconds, s.max_retries) == (False, 0.5, 3)
    assert s.as_dict()["Metadata"] == "4300"
    assert logic.parse_settings({"MammoDensity": {"Modality": "AI"},
                                 "UserMetadata": {"MammoDensity": 4242}}).metadata == \
        "MammoDensity"


@pytest.mark.parametrize(("config", "message"), [
    ({}, "no \"MammoDensity\" section"),
    ({"MammoDensity": {}}, "MammoDensity.Modality is required"),
    ({"MammoDensity": {"Modality": ""}}, "MammoDensity.Modality"),
    ({"MammoDensity": {"Modality": "AI", "Modalty": "x"}}, "unknown key(s) Modalty"),
    ({"MammoDensity": {"Modality": "AI", "MaxRetries": "3"}}, "MaxRetries must be a number"),
    ({"MammoDensity": {"Modality": "AI", "MaxRetries": 2.5}}, "must be an integer"),
    ({"MammoDensity": {"Modality": "AI", "RetrySeconds": -1}}, "RetrySeconds must be >= 0"),
    ({"MammoDensity": {"Modality": "AI", "RetrySeconds": 0}}, "RetrySeconds must be > 0"),
    ({"MammoDensity": {"Modality": "AI", "ForwardOnFourViews": 1}}, "true or false"),
    ({"MammoDensity": {"Modality": "AI", "ForwardEachImage": "yes"}}, "true or false"),
    ({"MammoDensity": {"Modality": "AI", "GlobalProperty": 10}}, "GlobalProperty must be >= 1024"),
    ({"MammoDensity": {"Modality": "AI", "Metadata": "Custom"}}, "not declared"),
    ({"MammoDensity": {"Modality": "AI", "Metadata": "12"}}, "must be >= 1024"),
    ({"MammoDensity": {"Modality": "AI"}, "UserMetadata": {"MammoDensity": 5}},
     "UserMetadata.MammoDensity must be an integer >= 1024"),
])
def test_settings_errors_name_the_key(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        logic.parse_settings(config)
    assert message in str(err.value)


# --- slots -------------------------------------------------------------------------------


def _variants() -> list[Dataset]:
    uid = "1.2.3"
    out = []
    for lat in ("R", "L", None):
        for view in ("CC", "MLO", "ML", "XCCL", None):
            for coding in ("position", "sct", "srt"):
                out.append(mgdata.mg(uid, lat, view, coding=coding))
    out.append(mgdata.mg(uid, "R", "CC", modifier=mgdata.SPOT_COMPRESSION))
    out.append(mgdata.mg(uid, "L", "MLO", coding="srt", modifier=mgdata.SPOT_COMPRESSION))
    ds = mgdata.mg(uid, None, "CC")
    ds.Laterality = "L"
    out.append(ds)
    ds = mgdata.mg(uid, None, "MLO", coding="sct")
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    group = Dataset()
    group.FrameAnatomySequence = Sequence([anatomy])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    out.append(ds)
    ds = mgdata.mg(uid, "R", None)
    ds.ViewPosition = "RL"  # a modified view spelled as position
    out.append(ds)
    return out


@pytest.mark.parametrize("ds", _variants())
def test_slot_agrees_with_the_listener_rules(ds: Dataset) -> None:
    tags = simplify(ds)
    expected = view_info(ds)
    assert logic.slot_of(tags) == expected.slot
    assert logic.laterality_of(tags) == expected.laterality
    view, modifiers = logic.view_of(tags)
    assert (view, set(modifiers)) == (expected.view, set(expected.modifiers))


def test_tables_equal_the_study_package() -> None:
    """The stdlib copy's SOP classes, view codes, slot rules and gate words are the study
    package's (mammo_density.study), value for value."""
    from mammo_density.study import codes, gate, slots, sop
    from mammo_density.study import views as study_views

    assert logic.VIEW_CODES == codes.VIEW_BY_CODE
    assert set(codes.VIEWS) == logic._VIEW_POSITIONS
    modified = {pos: codes.MODIFIERS[name].sct
                for pos, name in study_views.MODIFIED_POSITIONS.items()}
    assert modified == logic._MODIFIED_POSITIONS
    assert logic._IMPLANT_DISPLACED_SUFFIX == study_views.IMPLANT_DISPLACED_SUFFIX
    assert codes.MODIFIERS["implant displaced"].sct == logic._IMPLANT_DISPLACED
    assert (logic.SLOTS, logic.SIDES, logic.SCREENING_VIEWS) == \
        (slots.SLOTS, slots.SIDES, slots.SCREENING_VIEWS)
    assert (logic.MG_FOR_PRESENTATION, logic.MG_FOR_PROCESSING, logic.BREAST_TOMOSYNTHESIS,
            logic.XRAY_DOSE_SR, logic.SECONDARY_CAPTURE) == (
        sop.MG_FOR_PRESENTATION, sop.MG_FOR_PROCESSING, sop.BREAST_TOMOSYNTHESIS,
        sop.XRAY_RADIATION_DOSE_SR, sop.SECONDARY_CAPTURE)
    assert logic.MAMMO_IMAGE_CLASSES == sop.MAMMO_IMAGE_CLASSES
    assert {c: k for c, k in logic.CLASS_CODES.items()} == codes.DENSITY_BY_CODE
    assert {c: s for c, s in logic.SIDE_CODES.items()} == {
        c.sct: side for side, c in codes.LATERALITY.items()}
    for name in ("MIN_FIELD_MM", "MIN_MATRIX_PX", "HINT_FIELDS", "QC_WORDS", "STEREO_WORDS",
                 "SPECIMEN_WORDS"):
        assert getattr(logic, name) == getattr(gate, name), name


_HEADER_REASONS = {"quality_control", "stereotactic", "specimen", "too_small"}


@pytest.mark.parametrize("name", list(mgdata.gate_cases()))
def test_gate_agrees_with_the_study_package(name: str) -> None:
    from mammo_density.study import gate

    ds, reason = mgdata.gate_cases()[name]
    verdict = gate.screen(ds)
    assert (verdict.reason.value if verdict.reason else "") == reason
    tags = simplify(ds)
    assert logic.gate_reason(tags) == (reason if reason in _HEADER_REASONS else "")
    assert logic.slot_of(tags) == verdict.slot


@pytest.mark.parametrize("name", ["fo-dicom/GH133.dcm", "fo-dicom/OutOfBoundsOverlay.dcm",
                                  "openrem/MG-Im-GE-SenDS-scaled.dcm",
                                  "openrem/MG-Im-GE_Seno_1_ForPresentation.dcm",
                                  "openrem/MG-Im-Hologic-PropProj.dcm"])
def test_gate_agrees_on_real_headers(name: str) -> None:
    import pydicom

    from mammo_density.study import gate
    from tests.services import require_testdata

    ds = pydicom.dcmread(require_testdata("real-mg", *name.split("/")), stop_before_pixels=True)
    verdict = gate.screen(ds, digitised_film=True)
    tags = simplify(ds)
    reason = verdict.reason.value if verdict.reason else ""
    assert logic.gate_reason(tags) == (reason if reason in _HEADER_REASONS else "")
    assert logic.slot_of(tags) == verdict.slot


def test_study_slots_complete_on_four_views() -> None:
    tracker = logic.StudySlots()
    assert not tracker.add("s", "R-CC")
    assert not tracker.add("s", None)
    assert not tracker.add("s", "R-CC")
    assert not tracker.add("s", "L-CC")
    assert tracker.missing("s") == ["R-MLO", "L-MLO"]
    assert not tracker.add("s", "R-MLO")
    assert not tracker.add("other", "L-MLO")
    assert tracker.add("s", "L-MLO")
    tracker.forget("s")
    assert not tracker.complete("s")


# --- what to forward ---------------------------------------------------------------------


def test_forwardable_instances() -> None:
    plain = settings()
    assert logic.is_forwardable(mgdata.MG_PRES, "MG", plain)
    assert logic.is_forwardable(mgdata.MG_PROC, "mg", plain)
    assert not logic.is_forwardable(mgdata.COMPREHENSIVE_SR, "SR", plain)  # the density SR
    assert not logic.is_forwardable(mgdata.COMPREHENSIVE_SR, "MG", plain)
    assert not logic.is_forwardable(mgdata.RDSR, "SR", plain)
    assert not logic.is_forwardable(mgdata.TOMO, "MG", plain)
    assert not logic.is_forwardable("1.2.840.10008.5.1.4.1.1.2", "CT", plain)
    assert not logic.is_forwardable(mgdata.MG_PRES, "CT", plain)
    assert logic.is_forwardable(mgdata.MG_PRES, "", plain)  # Modality stripped
    assert not logic.is_forwardable(mgdata.SECONDARY_CAPTURE, "MG", plain)
    film = settings(ForwardDigitisedFilm=True)
    assert logic.is_forwardable(mgdata.SECONDARY_CAPTURE, "MG", film)
    assert not logic.is_forwardable(mgdata.SECONDARY_CAPTURE, "OT", film)
    assert not logic.is_forwardable(mgdata.SECONDARY_CAPTURE, "", film)
    extra = settings(ForwardDoseReports=True, ForwardTomosynthesis=True)
    assert logic.is_forwardable(mgdata.RDSR, "SR", extra)
    assert logic.is_forwardable(mgdata.TOMO, "MG", extra)
    assert not logic.is_forwardable(mgdata.COMPREHENSIVE_SR, "SR", extra)


def test_to_forward_skips_sent_and_foreign_instances() -> None:
    instances = [
        {"ID": "a", "SOPClassUID": mgdata.MG_PRES, "Modality": "MG"},
        {"ID": "b", "SOPClassUID": mgdata.MG_PRES, "Modality": "MG"},
        {"ID": "sr", "SOPClassUID": mgdata.COMPREHENSIVE_SR, "Modality": "SR"},
        {"ID": "c", "SOPClassUID": mgdata.MG_PROC, "Modality": "MG"},
    ]
    assert logic.to_forward(instances, [], settings()) == ["a", "b", "c"]
    assert logic.to_forward(instances, ["a", "c"], settings()) == ["b"]
    assert logic.to_forward(instances, ["a", "b", "c"], settings()) == []


def test_instance_info_from_simplified_tags() -> None:
    ds = mgdata.mg("1.2.3.4", "L", "MLO")
    info = logic.instance_info("iid", simplify(ds))
    assert info == logic.InstanceInfo("iid", "1.2.3.4", mgdata.MG_PRES, "MG", "L-MLO")


# --- retries and state -------------------------------------------------------------------


def test_backoff_doubles_and_caps() -> None:
    assert logic.backoff_delay(0, 10, 600) == 0
    assert [logic.backoff_delay(n, 10, 600) for n in range(1, 9)] == \
        [10, 20, 40, 80, 160, 320, 600, 600]
    assert logic.backoff_delay(10_000, 1, 30) == 30
    s = settings(RetrySeconds=2, MaxRetrySeconds=5, MaxRetries=4)
    assert logic.backoff_schedule(s) == [2, 4, 5, 5]


def test_failures_then_give_up_then_success() -> None:
    s = settings(RetrySeconds=1, MaxRetries=2)
    state = logic.new_state()
    logic.after_failure(state, "refused", s, now=100.0)
    assert (state["state"], state["failures"], state["next_try"]) == (logic.RETRYING, 1, 101.0)
    logic.after_failure(state, "refused", s, now=200.0)
    assert (state["state"], state["next_try"]) == (logic.RETRYING, 202.0)
    logic.after_failure(state, "x" * 2000, s, now=300.0)
    assert state["state"] == logic.FAILED and state["next_try"] is None
    assert len(state["last_error"]) == 500
    logic.after_success(state, ["a", "b"], "manual", now=400.0)
    assert state["state"] == logic.FORWARDED and state["failures"] == 0
    logic.after_success(state, ["b", "c"], "stable", now=401.0)
    assert state["forwarded"] == ["a", "b", "c"]


def test_image_sent_ahead_keeps_the_study_waiting() -> None:
    s = settings(RetrySeconds=1)
    state = logic.new_state()
    logic.after_failure(state, "refused", s, now=100.0)
    state["state"] = logic.WAITING  # new images for the study
    logic.after_early_success(state, ["a"], now=101.0)
    assert (state["state"], state["forwarded"], state["failures"], state["last_error"]) == \
        (logic.WAITING, ["a"], 0, "")
    logic.after_early_success(state, ["a", "b"], now=102.0)
    assert state["forwarded"] == ["a", "b"] and state["reason"] == "each-image"
    instances = [{"ID": i, "SOPClassUID": logic.MG_FOR_PRESENTATION, "Modality": "MG"}
                 for i in "abcd"]
    assert logic.to_forward(instances, state["forwarded"], s) == ["c", "d"]
    logic.after_success(state, ["c"], "four-views", now=103.0)
    assert state["state"] == logic.FORWARDED and state["forwarded"] == ["a", "b", "c"]


def test_state_round_trip_and_garbage() -> None:
    state = logic.new_state()
    logic.after_success(state, ["x"], "four-views", now=1.0)
    again = logic.load_state(logic.dump_state(state, now=5.0).encode())
    assert again["state"] == logic.FORWARDED and again["forwarded"] == ["x"]
    assert again["updated"] == 5.0
    for bad in (None, b"", b"not json", b"[1, 2]", json.dumps({"state": "odd"}),
                json.dumps({"forwarded": "nope"})):
        loaded = logic.load_state(bad)
        assert loaded["state"] == logic.WAITING and loaded["forwarded"] == []
    assert logic.load_pending(None) == {"pending": [], "failed": []}
    assert logic.load_pending(b"{bad") == {"pending": [], "failed": []}
    assert logic.load_pending(json.dumps({"pending": ["a"], "failed": ["b"]})) == \
        {"pending": ["a"], "failed": ["b"]}


# --- the SR ------------------------------------------------------------------------------


def _sr(slots=SLOTS, demo: bool = False, agd: dict | None = None) -> Dataset:
    sources = srdata.mg_study(slots)
    man = srdata.manifest(demo=demo)
    return build_density_sr(srdata.result_for(sources, agd=agd, man=man), sources, man)


def test_parse_density_sr_matches_the_sr_reader() -> None:
    sr = _sr(agd={"R": 1.25, "L": 1.5})
    expected = read_density_sr(sr)
    got = logic.parse_density_sr(simplify(sr))
    assert got is not None
    assert got["sop_instance_uid"] == expected["sop_instance_uid"]
    assert got["study_instance_uid"] == expected["study_instance_uid"]
    assert {s: b["category"] for s, b in got["breasts"].items()} == expected["categories"]
    assert got["breasts"]["R"]["code"] == "129718006"
    assert got["overall"]["category"] == expected["overall"] == "C"
    assert got["overall"]["dense"] is expected["dense"] is True
    assert got["overall"]["text"] == expected["text"]
    for side in ("R", "L"):
        assert got["breasts"][side]["probabilities"] == \
            pytest.approx(expected["probabilities"][side], abs=1e-4)
        assert got["breasts"][side]["agd_mgy"] == pytest.approx(expected["agd_mgy"][side])
    assert got["algorithm"] == expected["algorithm"]
    assert got["partial"] is False and got["assessable"] is True
    assert got["not_for_clinical_use"] is False


def test_parse_partial_and_demo_sr() -> None:
    got = logic.parse_density_sr(simplify(_sr(slots=("L-CC", "L-MLO"), demo=True)))
    assert got is not None
    assert set(got["breasts"]) == {"L"} and got["partial"] is True
    assert got["overall"]["category"] == "B" and got["overall"]["dense"] is False
    assert got["not_for_clinical_use"] is True


def test_three_view_study_is_partial_with_both_breasts() -> None:
    """Both breasts assessed, one view missing: the coded flag says partial (before 0.2
    the plugin counted breasts and said not partial)."""
    sr = _sr(slots=("R-CC", "R-MLO", "L-CC"))
    got = logic.parse_density_sr(simplify(sr))
    assert set(got["breasts"]) == {"R", "L"}
    assert got["partial"] is True and got["overall"]["partial"] is True
    assert read_density_sr(sr)["partial"] is True
    assert logic.parse_density_sr(simplify(_sr()))["partial"] is False


def test_plugin_codes_agree_with_the_sr_module() -> None:
    from mammo_density.worker import sr as srmod

    assert {c.value: k for k, c in srmod.PROBABILITY_CODES.items()} == logic.PROBABILITY_CODES
    assert srmod.PARTIAL.value == logic.CODE_PARTIAL and srmod.DENSE.value == logic.CODE_DENSE
    assert logic.CLASS_CODES == srmod.CLASS_BY_CODE


def test_other_instances_are_not_density_reports() -> None:
    assert logic.parse_density_sr(simplify(mgdata.mg("1.2", "R", "CC"))) is None
    assert logic.parse_density_sr(simplify(mgdata.rdsr("1.2"))) is None
    assert logic.parse_density_sr({}) is None
    assert logic.latest_result([None, None]) is None
    a = {"content_datetime": "20260101101010", "id": "a"}
    b = {"content_datetime": "20260102090000", "id": "b"}
    assert logic.latest_result([a, None, b])["id"] == "b"


def test_metadata_defaults_to_an_index_without_user_metadata() -> None:
    assert settings().metadata == "4242"
