"""Header hygiene: values copied from source headers into the SR are valid for their VR
(mammo_density.dicom_values), and SRs built from every real header are dciodvfy-clean."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_density.dicom_values import clean_dataset, clean_value, invalid_uids
from mammo_density.result import BreastResult, ExamResult, StudyResult
from mammo_density.views import view_info
from mammo_density.worker.sr import build_density_sr, read_density_sr
from tests import srdata
from tests.services import dciodvfy, dsrdump, require_testdata

pytestmark = pytest.mark.services

PROBS = {"A": 0.1, "B": 0.6, "C": 0.2, "D": 0.1}


@pytest.mark.parametrize(("vr", "raw", "clean"), [
    ("AS", "732.0m", "732M"), ("AS", "61 Y", "061Y"), ("AS", "old", ""), ("AS", "1000Y", ""),
    ("DA", "2026-01-01", "20260101"), ("DA", "2026.01.31", "20260131"),
    ("DA", "20261340", ""), ("DA", "1", ""),
    ("TM", "12:30:00", "123000"), ("TM", "256000", ""),
    ("DT", "2026-01-01 12:00", "202601011200"),
    ("PN", "A" * 311, "A" * 64), ("PN", "Doe^Jane", "Doe^Jane"),
    ("LO", "x" * 70, "x" * 64), ("SH", "y" * 20, "y" * 16),
    ("CS", "abc", "ABC"), ("CS", "a-b", ""),
    ("UI", "../../etc/passwd", ""), ("UI", "1.2.03", ""), ("UI", "1.2.3", "1.2.3"),
    ("DS", "1.234567890123456789", "1.23456789012346"), ("DS", "x", ""), ("IS", "12.5", ""),
])
def test_values_are_made_valid_or_empty(vr, raw, clean):
    assert clean_value(vr, raw) == clean


def test_dataset_is_cleaned_recursively():
    ds = Dataset()
    ds.PatientAge = "732.0m"
    ds.PatientName = "N" * 311
    ds.OtherPatientIDs = ["ok", "z" * 80]
    item = Dataset()
    item.ReferencedSOPInstanceUID = "../../../etc/passwd"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.ReferencedStudySequence = [item]
    assert clean_dataset(ds)
    assert ds.PatientAge == "732M"
    assert len(str(ds.PatientName)) == 64
    assert list(ds.OtherPatientIDs) == ["ok", "z" * 64]
    assert "ReferencedStudySequence" not in ds  # a reference to nothing is dropped
    assert not clean_dataset(ds)  # nothing left to change


def _result_for(ds: Dataset) -> StudyResult:
    side = view_info(ds).laterality
    if side not in ("R", "L"):
        return StudyResult(study_instance_uid=str(ds.StudyInstanceUID), assessable=False,
                           warnings=["not assessable: not a screening view"])
    return StudyResult(
        study_instance_uid=str(ds.StudyInstanceUID),
        exam=ExamResult(category="B", probabilities=PROBS, dense=False, p_dense=0.3,
                        dense_source="birads4"),
        breasts={side: BreastResult(category="B", probabilities=PROBS)},
        low_confidence=True, low_confidence_reasons=["L-CC: tiny image (1x2 pixels)"])


_PATIENT_STUDY = ("SpecificCharacterSet", "StudyInstanceUID", "StudyDate", "StudyTime",
                  "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDescription")


def _image_header(path: Path) -> Dataset:
    """The file's header where it is an image; else (dose SRs) its patient and study
    attributes grafted onto a small MG image header."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" in ds and "Columns" in ds:
        return ds
    img = srdata.mg_image(str(ds.StudyInstanceUID), "L-CC")
    for elem in ds:
        if elem.tag.group == 0x0010 or elem.keyword in _PATIENT_STUDY:
            img[elem.tag] = elem
    return img


def _real_headers() -> list[Path]:
    root = require_testdata("real-mg")
    paths = sorted(root.rglob("*.dcm"))
    assert len(paths) >= 12
    return paths


def test_srs_from_every_real_header_are_dciodvfy_clean(tmp_path):
    man = srdata.manifest(demo=True)
    for path in _real_headers():
        src = _image_header(path)
        sr = build_density_sr(_result_for(src), [src], man)
        out = tmp_path / f"{path.stem}-sr.dcm"
        sr.save_as(out, enforce_file_format=True)
        errors, _ = dciodvfy(out)
        assert errors == [], (path.name, errors)
        assert dsrdump(out).returncode == 0, path.name


def test_sr_from_an_adversarial_header(tmp_path):
    study = generate_uid()
    src = srdata.mg_image(study, "L-CC", patient_name="Q" * 311)
    src.PatientAge = "732.0m"
    src.StudyDate = "2026-01-01"
    src.StudyTime = "25:61:00"
    src.StudyDescription = "d" * 200
    src.AccessionNumber = "a" * 40
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "../../etc/passwd"
    src.ReferencedStudySequence = [item]
    man = srdata.manifest()
    sr = build_density_sr(_result_for(src), [src], man)
    out = tmp_path / "sr.dcm"
    sr.save_as(out, enforce_file_format=True)
    errors, _ = dciodvfy(out)
    assert errors == [], errors
    back = pydicom.dcmread(out)
    assert back.PatientAge == "732M" and back.StudyDate == "20260101"
    assert len(str(back.PatientName)) == 64 and back.StudyTime in (None, "")
    assert src.PatientAge == "732.0m"  # the caller's dataset is not changed
    # a low-confidence exam says so in the SR's text line
    text = read_density_sr(back)["text"]
    assert "Low confidence, review the images: L-CC: tiny image (1x2 pixels)" in text
    # a source whose identity is not a UID gets no SR at all (and never a file name)
    bad = srdata.mg_image(study, "L-CC")
    bad.SOPInstanceUID = "../../../tmp/x"
    assert invalid_uids(bad) == ["SOPInstanceUID"]
    with pytest.raises(ValueError, match="SOPInstanceUID not a valid UID"):
        build_density_sr(_result_for(bad), [bad], man)
