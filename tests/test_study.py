"""The study rules (mammo_density.study): codes, SOP classes and For Presentation, slots,
the screening-image gate and image selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import pydicom
import pytest
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr.codedict import codes as pydicom_codes

from mammo_density.result import ScreeningView, Side, Slot
from mammo_density.study import codes, gate, slots, sop
from mammo_density.study.reasons import SENTENCES, Reason, note, parse_note
from mammo_density.study.selection import choose
from tests import mgdata
from tests.services import require_testdata

# --- code tables against PS3.16 (pydicom's copy) ----------------------------------------------


@pytest.mark.parametrize(("cid", "table"), [(4014, codes.VIEWS), (4015, codes.MODIFIERS),
                                            (6000, codes.DENSITY), (244, codes.LATERALITY)])
def test_every_sct_code_is_one_of_the_cid(cid: int, table: dict) -> None:
    """Each SCT code of our table is in the CID, and (but for CID 244's "unilateral", which
    no report needs) every code of the CID is in our table."""
    cid_values = {getattr(pydicom_codes.SCT, name).value for name in cid_concepts[cid]["SCT"]}
    ours = {c.sct for c in table.values() if c.sct}
    assert ours <= cid_values
    assert cid_values - ours <= ({"66459002"} if cid == 244 else set())


def test_sr_view_codes_are_the_one_table() -> None:
    """worker/sr.py used to carry XCCL 399192003 and FB 399196000 (wrong)."""
    from mammo_density.worker import sr

    assert sr.VIEW_CODES["XCCL"].value == "399192008"
    assert sr.VIEW_CODES["FB"].value == "399196006"
    assert {v: c.value for v, c in sr.VIEW_CODES.items()} == {
        v: c.sct for v, c in codes.VIEWS.items() if c.sct}


# --- SOP classes and For Presentation ---------------------------------------------------------


@pytest.mark.parametrize(("sop_class", "intent", "expected"), [
    (sop.MG_FOR_PRESENTATION, "FOR PRESENTATION", True),
    (sop.MG_FOR_PRESENTATION, "FOR PROCESSING", True),  # broken header: the class decides
    (sop.MG_FOR_PRESENTATION, "", True),
    (sop.MG_FOR_PROCESSING, "FOR PRESENTATION", False),
    (sop.MG_FOR_PROCESSING, "", False),
    (sop.BREAST_PROJECTION_FOR_PRESENTATION, "", True),
    (sop.SECONDARY_CAPTURE, "", True),  # digitised film: shown as it is
    (sop.SECONDARY_CAPTURE, "FOR PROCESSING", False),
])
def test_one_for_presentation_rule(sop_class: str, intent: str, expected: bool) -> None:
    assert sop.is_for_presentation(sop_class, intent) is expected


def test_secondary_capture_only_with_the_option() -> None:
    assert sop.SECONDARY_CAPTURE not in sop.accepted_classes()
    assert sop.kind_of(sop.SECONDARY_CAPTURE) is None
    assert sop.kind_of(sop.SECONDARY_CAPTURE, digitised_film=True) == sop.KIND_IMAGE
    assert set(sop.SOP_KINDS) < set(sop.accepted_classes(digitised_film=True))


# --- slots ------------------------------------------------------------------------------------


def test_slots_and_the_result_schema_derive_from_one_table() -> None:
    assert slots.SLOTS == ("R-CC", "L-CC", "R-MLO", "L-MLO")
    assert get_args(Slot) == slots.SLOTS
    assert get_args(ScreeningView) == slots.SCREENING_VIEWS
    assert get_args(Side) == slots.SIDES
    assert slots.is_complete(dict.fromkeys(slots.SLOTS, True))
    assert not slots.is_complete({**dict.fromkeys(slots.SLOTS, True), "L-MLO": False})
    assert not slots.is_complete(dict.fromkeys(slots.SLOTS[:3], True))


# --- the gate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(mgdata.gate_cases()))
def test_gate_reason_of_each_case(name: str) -> None:
    ds, reason = mgdata.gate_cases()[name]
    verdict = gate.screen(ds)
    assert (verdict.reason.value if verdict.reason else "") == reason
    if reason:
        assert verdict.slot is None
        assert verdict.sentence.startswith(SENTENCES[verdict.reason])
        assert parse_note(verdict.note)[0] is verdict.reason
    else:
        assert verdict.slot == f"{ds.ImageLaterality}-{ds.ViewPosition}"
    assert verdict.implant_present is (name == "implants in place")


@pytest.mark.parametrize(("name", "reason", "detail"), [
    ("fo-dicom/OutOfBoundsOverlay.dcm", Reason.STEREOTACTIC,
     "header says STEREO; field of view 67 x 112 mm, under 80 mm"),
    ("openrem/MG-Im-GE-SenDS-scaled.dcm", Reason.TOO_SMALL, "4 x 4 pixels, under 128"),
    ("openrem/MG-Im-GE_Seno_1_ForPresentation.dcm", Reason.STEREOTACTIC,
     "header says STEREO; 1 x 2 pixels, under 128"),
    ("openrem/MG-Im-GE_Seno_1_ForProcessing.dcm", Reason.STEREOTACTIC,
     "header says STEREO; 1 x 2 pixels, under 128"),
    ("openrem/MG-Im-Hologic-PropProj.dcm", Reason.QUALITY_CONTROL, "header says FLATFIELD"),
    ("fo-dicom/GH133.dcm", None, ""),
])
def test_gate_on_real_vendor_headers(name: str, reason: Reason | None, detail: str) -> None:
    ds = pydicom.dcmread(require_testdata("real-mg", *name.split("/")), stop_before_pixels=True)
    for film in (False, True):
        verdict = gate.screen(ds, digitised_film=film)
        assert (verdict.reason, verdict.detail) == (reason, detail)
    assert gate.is_quality_control(ds) is (reason is Reason.QUALITY_CONTROL)


def test_digitised_film_is_an_option() -> None:
    film = mgdata.mg("1.2.3", "R", "MLO", sop_class=mgdata.SECONDARY_CAPTURE)
    assert gate.screen(film).reason is Reason.DIGITISED_FILM_OFF
    verdict = gate.screen(film, digitised_film=True)
    assert (verdict.reason, verdict.slot, verdict.for_presentation) == (None, "R-MLO", True)
    film.Modality = "OT"
    assert gate.screen(film, digitised_film=True).reason is Reason.NOT_MAMMOGRAM


def test_synthetic_2d_accepted_when_labelled() -> None:
    ds = mgdata.mg("1.2.3", "L", "CC", sop_class=sop.BREAST_PROJECTION_FOR_PRESENTATION)
    assert gate.screen(ds).reason is Reason.TOMOSYNTHESIS
    ds.ImageType = ["DERIVED", "PRIMARY", "GENERATED_2D"]
    verdict = gate.screen(ds)
    assert (verdict.kind, verdict.slot, verdict.synthetic_2d) == (sop.KIND_IMAGE, "L-CC", True)
    ds.NumberOfFrames = 15  # a stack of projections, whatever its label
    assert gate.screen(ds).reason is Reason.TOMOSYNTHESIS
    c_view = mgdata.mg("1.2.3", "R", "CC")
    c_view.SeriesDescription = "R CC C-View"
    assert gate.screen(c_view).synthetic_2d and gate.screen(c_view).slot == "R-CC"


def test_size_limits_are_physical() -> None:
    ds = mgdata.mg("1.2.3", "R", "CC", rows=1000, cols=800)
    ds.ImagerPixelSpacing = [0.1, 0.1]  # 100 x 80 mm: a screening field
    assert gate.screen(ds).slot == "R-CC"
    ds.ImagerPixelSpacing = [0.1, 0.099]  # 79.2 mm: below the limit
    assert gate.screen(ds).reason is Reason.TOO_SMALL
    ds = mgdata.mg("1.2.3", "R", "CC", rows=gate.MIN_MATRIX_PX, cols=gate.MIN_MATRIX_PX)
    assert gate.screen(ds).slot == "R-CC"  # no spacing: only the matrix limit applies


def test_reason_notes_round_trip() -> None:
    for reason in Reason:
        assert reason in SENTENCES
        assert parse_note(note(reason, "x: y", laterality="L")) == (reason, "L", None, "x: y")
    assert parse_note("some older free text") == (None, None, None, "some older free text")


# --- selection --------------------------------------------------------------------------------


@dataclass
class Img:
    name: str
    slot: str | None
    for_presentation: bool = True
    acquired: str = ""
    instance_number: int | None = 1
    seq: int = 0


def test_selection_prefers_presentation_then_latest_and_says_why() -> None:
    imgs = [Img("proc-new", "R-CC", False, acquired="20240101120000", seq=1),
            Img("pres-old", "R-CC", True, acquired="20240101100000", seq=2),
            Img("pres-new", "R-CC", True, acquired="20240101110000", seq=3),
            Img("proc-only", "L-CC", False, seq=4),
            Img("same-time-2", "R-MLO", instance_number=2, seq=5),
            Img("same-time-1", "R-MLO", instance_number=1, seq=6),
            Img("unslotted", None, seq=7)]
    choice = choose(imgs)
    assert {s: c.name for s, c in choice.images.items()} == {
        "R-CC": "pres-new", "L-CC": "proc-only", "R-MLO": "same-time-2"}
    assert {c.name: r for c, r in choice.passed_over} == {
        "proc-new": Reason.FOR_PROCESSING_SUPERSEDED, "pres-old": Reason.RETAKE_SUPERSEDED,
        "same-time-1": Reason.RETAKE_SUPERSEDED}
    assert choice.missing == ["L-MLO"] and not choice.complete


def test_training_adapters_can_gate_their_files(tmp_path) -> None:
    from mammo_density.train.adapters.common import gate_records
    from mammo_density.train.data import ImageRecord

    records = []
    for name, (ds, _) in mgdata.gate_cases().items():
        path = mgdata.write(ds, tmp_path, f"{len(records)}.dcm")
        records.append(ImageRecord(exam_id="e", patient_id="p", laterality="R", view="CC",
                                   path=path, density="B", fields={"case": name}))
    png = ImageRecord(exam_id="e", patient_id="p", laterality="R", view="CC",
                      path=tmp_path / "x.png", density="B")
    (tmp_path / "junk.dcm").write_text("junk")
    junk = ImageRecord(exam_id="e", patient_id="p", laterality="R", view="CC",
                       path=tmp_path / "junk.dcm", density="B")
    kept, dropped = gate_records([*records, png, junk])
    assert [r.fields.get("case") for r in kept] == ["screening", "implants in place", None]
    expected: dict[str, int] = {"unreadable": 1}
    for _, reason in mgdata.gate_cases().values():
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert dropped == expected
