"""Laterality, view and slot of mammograms (mammo_density.views)."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr.codedict import codes

from mammo_density.views import MODIFIER_CODES, VIEW_CODES, view_info
from tests.mgdata import SPOT_COMPRESSION, code_item, mg
from tests.services import require_testdata

# PS3.16 CID 4014 concept -> the short name we use for it.
CID4014_NAMES = {
    "CranioCaudal": "CC", "MedioLateralObliqueProjection": "MLO",
    "MedioLateralProjection": "ML", "LateroMedial": "LM", "LateroMedialOblique": "LMO",
    "CranioCaudalExaggeratedLaterally": "XCCL", "CranioCaudalExaggeratedMedially": "XCCM",
    "CaudoCranial": "FB", "SuperolateralToInferomedialOblique": "SIO",
    "InferomedialToSuperolateralOblique": "ISO", "TissueSpecimenFromBreast": "SPECIMEN",
}


def test_every_cid4014_sct_code_is_mapped_correctly():
    names = cid_concepts[4014]["SCT"]
    assert set(names) == set(CID4014_NAMES)
    for name in names:
        assert VIEW_CODES[getattr(codes.SCT, name).value] == CID4014_NAMES[name], name


def test_every_cid4015_modifier_is_known():
    for name in cid_concepts[4015]["SCT"]:
        assert getattr(codes.SCT, name).value in MODIFIER_CODES, name


@pytest.mark.parametrize("coding", ["position", "sct", "srt"])
@pytest.mark.parametrize("lat,view", [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")])
def test_screening_slots_from_any_coding(coding, lat, view):
    info = view_info(mg("1.2.3", lat, view, coding=coding))
    assert info.slot == f"{lat}-{view}"
    assert info.source == ("ViewPosition" if coding == "position" else "ViewCodeSequence")


def test_laterality_fallbacks():
    ds = mg("1.2.3", None, "CC")
    ds.Laterality = "L"
    assert view_info(ds).slot == "L-CC"
    ds = mg("1.2.3", None, "MLO")
    frame = Dataset()
    frame.FrameLaterality = "R"
    shared = Dataset()
    shared.FrameAnatomySequence = Sequence([frame])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    assert view_info(ds).slot == "R-MLO"


@pytest.mark.parametrize("kw,reason", [
    ({"laterality": None, "view": "CC"}, "laterality"),
    ({"laterality": "R", "view": None}, "view missing"),
    ({"laterality": "R", "view": "XCCL"}, "not a screening view"),
    ({"laterality": "L", "view": "ML", "coding": "srt"}, "not a screening view"),
    ({"laterality": "R", "view": "CC", "modifier": SPOT_COMPRESSION}, "modified view"),
])
def test_not_slotted(kw, reason):
    info = view_info(mg("1.2.3", **kw))
    assert info.slot is None
    assert reason in info.not_slotted_reason


def test_legacy_srt_magnification_modifier():
    ds = mg("1.2.3", "L", "MLO", coding="srt", modifier=("R-102D6", "SRT", "Magnification"))
    assert view_info(ds).modifiers == ("R-102D6",)
    assert view_info(ds).slot is None


def test_top_level_modifier_sequence():
    ds = mg("1.2.3", "L", "CC")
    ds.ViewModifierCodeSequence = Sequence([code_item(*SPOT_COMPRESSION)])
    assert view_info(ds).slot is None


@pytest.mark.parametrize("name,slot", [
    ("fo-dicom/GH133.dcm", "R-MLO"),
    ("fo-dicom/OutOfBoundsOverlay.dcm", "L-CC"),
    ("openrem/MG-Im-GE_Seno_1_ForPresentation.dcm", "L-CC"),
    ("openrem/MG-Im-GE_Seno_1_ForProcessing.dcm", "L-CC"),
    ("openrem/MG-Im-GE-SenDS-scaled.dcm", "L-CC"),
])
def test_real_vendor_headers(name, slot):
    ds = pydicom.dcmread(require_testdata("real-mg", *name.split("/")), stop_before_pixels=True)
    assert view_info(ds).slot == slot
