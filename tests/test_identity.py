"""The patient identity rule (mammo_density/study/identity.py) and its use by the assembler."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_density.plugin.assembly import (
    KIND_IMAGE,
    MG_FOR_PRESENTATION,
    NewInstance,
    StudyAssembler,
)
from mammo_density.plugin.state import StateDB
from mammo_density.study.identity import Identity, conflict, differences, same_patient
from tests.mgdata import mg, write


def ident(**values: str) -> Identity:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return Identity.of(ds)


def test_normalised_values_agree():
    a = ident(PatientID="123 ", PatientName="doe^jane^^", PatientBirthDate="19700101")
    b = ident(PatientID="123", PatientName="DOE^JANE", PatientBirthDate="19700101")
    assert same_patient(a, b) and a == b


@pytest.mark.parametrize("keyword,other", [("PatientID", "124"),
                                           ("IssuerOfPatientID", "OTHER"),
                                           ("PatientName", "Roe^Mary"),
                                           ("PatientBirthDate", "19800101")])
def test_a_different_value_is_another_patient(keyword, other):
    base = {"PatientID": "123", "IssuerOfPatientID": "HOSP", "PatientName": "Doe^Jane",
            "PatientBirthDate": "19700101"}
    a = ident(**base)
    b = ident(**{**base, keyword: other})
    assert differences(a, b) == [keyword]


def test_empty_values_are_unknown():
    full = ident(PatientID="123", IssuerOfPatientID="HOSP", PatientName="Doe^Jane",
                 PatientBirthDate="19700101")
    assert same_patient(full, ident(PatientID="123"))
    assert same_patient(full, ident())
    # not transitive: one image without a name, two with different names -> conflict
    assert conflict([ident(PatientID="1", PatientName="A^B"), ident(PatientID="1"),
                     ident(PatientID="1", PatientName="C^D")]) != ""


def test_identities_hold_no_identifiers():
    text = ident(PatientID="PAT-SECRET", PatientName="Secret^Name").to_json()
    assert "SECRET" not in text.upper() and "Secret" not in text
    assert Identity.from_json(text) == ident(PatientID="PAT-SECRET", PatientName="Secret^Name")


def test_unconvertible_value_is_compared_raw():
    ds = Dataset()
    ds.add_new(0x00100030, "DA", "garbage-date")
    assert Identity.of(ds).birth_date


def test_queue_time_check_reads_old_rows_from_the_spool(tmp_path: Path):
    """Rows recorded before identities were kept (identity NULL) are read from their
    files when the study is queued: two patients -> held, never queued."""
    db = StateDB(tmp_path / "state.sqlite3")
    jobs: list = []
    asm = StudyAssembler(db, jobs.append, stable_seconds=60)
    uid = generate_uid()
    for i, (lat, view) in enumerate((("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))):
        ds = mg(uid, lat, view, patient_id="PAT-A" if i < 2 else "PAT-B")
        path = write(ds, tmp_path / "spool")
        asm.add(NewInstance(sop_uid=ds.SOPInstanceUID, study_uid=uid,
                            sop_class_uid=MG_FOR_PRESENTATION, path=str(path),
                            kind=KIND_IMAGE, slot=f"{lat}-{view}", for_presentation=True))
    assert jobs == []
    row = db.study(uid)
    assert row["status"] == "conflicting" and "PatientID" in row["last_error"]
    assert row["result"]["conflicting"] is True
    more = mg(uid, "R", "CC", patient_id="PAT-A", acquired="20991231000000")
    asm.add(NewInstance(sop_uid=more.SOPInstanceUID, study_uid=uid,
                        sop_class_uid=MG_FOR_PRESENTATION, path="/x", kind=KIND_IMAGE,
                        slot="R-CC", for_presentation=True,
                        identity=Identity.of(more).to_json()))
    assert asm.check_stable(now=2e10) == 0 and jobs == []
    assert db.study(uid)["status"] == "conflicting"
    db.close()


def test_status_shows_the_held_study_and_why(tmp_path: Path, capsys):
    import argparse

    from mammo_density.commands import status
    from mammo_density.config import load_settings

    settings = load_settings(None, data_dir=tmp_path)
    db = StateDB(settings.state_db)
    asm = StudyAssembler(db, lambda job: None, stable_seconds=60)
    uid = generate_uid()
    a = mg(uid, "R", "CC", patient_id="PAT-A")
    asm.add(NewInstance(sop_uid=a.SOPInstanceUID, study_uid=uid,
                        sop_class_uid=MG_FOR_PRESENTATION, path="/a", kind=KIND_IMAGE,
                        slot="R-CC", for_presentation=True, identity=Identity.of(a).to_json()))
    b = mg(uid, "L", "CC", patient_id="PAT-B")
    reason = asm.patient_conflict(NewInstance(
        sop_uid=b.SOPInstanceUID, study_uid=uid, sop_class_uid=MG_FOR_PRESENTATION, path="/b",
        kind=KIND_IMAGE, slot="L-CC", for_presentation=True, identity=Identity.of(b).to_json()))
    assert "PatientID" in reason
    asm.hold_conflicting(uid, reason)
    db.close()
    data = status.collect(settings)
    assert data["counts"]["conflicting"] == 1
    held = data["studies"]["conflicting"][0]
    assert held["result"]["conflicting"] is True and "PatientID" in held["last_error"]
    status.run(argparse.Namespace(json=False, errors=5), settings)
    text = capsys.readouterr().out
    assert "conflicting 1" in text and "different patients" in text
    assert "PAT-A" not in text and "PAT-B" not in text


def test_two_patients_recorded_at_once_are_held_when_recorded(tmp_path: Path):
    """Two associations store images of different patients at the same moment: both pass
    the door's look at the study, but recording the second holds the study at once."""
    db = StateDB(tmp_path / "state.sqlite3")
    jobs: list = []
    asm = StudyAssembler(db, jobs.append, stable_seconds=60)
    uid = generate_uid()
    for lat, pid in (("R", "PAT-A"), ("L", "PAT-B")):
        ds = mg(uid, lat, "CC", patient_id=pid)
        asm.add(NewInstance(sop_uid=ds.SOPInstanceUID, study_uid=uid,
                            sop_class_uid=MG_FOR_PRESENTATION, path="/x", kind=KIND_IMAGE,
                            slot=f"{lat}-CC", for_presentation=True,
                            identity=Identity.of(ds).to_json()))
    assert db.study(uid)["status"] == "conflicting" and jobs == []
    db.close()


def test_repeated_refusals_do_not_move_the_held_study(tmp_path: Path):
    db = StateDB(tmp_path / "state.sqlite3")
    asm = StudyAssembler(db, lambda job: None, stable_seconds=60)
    uid = generate_uid()
    asm.hold_conflicting(uid, "first reason")
    revision = db.study(uid)["revision"]
    for _ in range(3):  # the sender re-sends the refused image
        asm.hold_conflicting(uid, "again")
    row = db.study(uid)
    assert row["revision"] == revision and row["last_error"] == "first reason"
    db.close()
