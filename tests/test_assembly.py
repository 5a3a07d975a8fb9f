"""Study assembly rules and the state database (plugin/assembly.py, plugin/state.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from mammo_density.logsetup import uid_hash
from mammo_density.plugin.assembly import (
    KIND_IMAGE,
    KIND_RDSR,
    KIND_SR,
    KIND_TOMO,
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    NewInstance,
    StudyAssembler,
    acquisition_key,
)
from mammo_density.plugin.state import StateDB
from mammo_density.study.reasons import Reason, note
from tests.mgdata import mg


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: Path):
    db = StateDB(tmp_path / "state.sqlite3")
    jobs: list = []
    clock = Clock()
    asm = StudyAssembler(db, jobs.append, stable_seconds=60, clock=clock)
    yield db, asm, jobs, clock
    db.close()


def inst(study: str, slot: str | None, *, kind: str = KIND_IMAGE, pres: bool = True,
         acquired: str = "", number: int | None = 1, sop: str | None = None) -> NewInstance:
    sop = sop or generate_uid()
    return NewInstance(sop_uid=sop, study_uid=study,
                       sop_class_uid=MG_FOR_PRESENTATION if pres else MG_FOR_PROCESSING,
                       path=f"/spool/{sop}.dcm", kind=kind, slot=slot, for_presentation=pres,
                       acquired=acquired, instance_number=number)


FOUR = ("R-CC", "L-CC", "R-MLO", "L-MLO")


def test_complete_study_queued_once_immediately(env):
    db, asm, jobs, _ = env
    study = generate_uid()
    for slot in FOUR[:3]:
        asm.add(inst(study, slot))
    assert jobs == [] and db.study(study)["status"] == "collecting"
    asm.add(inst(study, "L-MLO"))
    assert len(jobs) == 1
    job = jobs[0]
    assert {im.slot for im in job.images} == set(FOUR)
    assert not job.partial and job.missing_views == [] and job.revision == 1
    assert db.study(study)["status"] == "queued"
    assert asm.check_stable(now=2e9) == 0  # nothing collecting any more
    assert len(jobs) == 1


def test_duplicate_sop_is_idempotent(env):
    db, asm, _jobs, _ = env
    study = generate_uid()
    first = inst(study, "R-CC")
    assert asm.add(first) is True
    assert asm.add(first) is False
    assert len(db.instances(study)) == 1
    assert db.instances(study)[0].times_received == 2


def test_retake_latest_acquisition_wins(env):
    _db, asm, jobs, _clock = env
    study = generate_uid()
    late = inst(study, "R-CC", acquired="20240101101500.000000", number=1)
    early = inst(study, "R-CC", acquired="20240101100000.000000", number=5)
    asm.add(late)
    asm.add(early)  # arrives later, acquired earlier, higher number: loses
    for slot in FOUR[1:]:
        asm.add(inst(study, slot))
    assert jobs[0].image_for("R-CC").sop_instance_uid == late.sop_uid
    assert early.sop_uid in jobs[0].other_sop_uids


def test_retake_instance_number_then_arrival(env):
    _db, asm, jobs, _ = env
    study = generate_uid()
    a = inst(study, "L-CC", number=3)
    b = inst(study, "L-CC", number=2)
    c = inst(study, "R-CC", number=None)
    d = inst(study, "R-CC", number=None)
    for x in (a, b, c, d, inst(study, "R-MLO"), inst(study, "L-MLO")):
        asm.add(x)
    assert jobs[0].image_for("L-CC").sop_instance_uid == a.sop_uid
    assert jobs[0].image_for("R-CC").sop_instance_uid == d.sop_uid


def test_for_presentation_preferred_processing_fallback(env):
    _db, asm, jobs, clock = env
    study = generate_uid()
    proc = inst(study, "R-CC", pres=False, acquired="20250101000000")
    asm.add(proc)
    for slot in FOUR[1:]:
        asm.add(inst(study, slot))
    assert jobs == []  # R-CC only has a For Processing image: not complete
    clock.now += 61
    assert asm.check_stable() == 1
    job = jobs[0]
    assert job.image_for("R-CC").sop_instance_uid == proc.sop_uid
    assert not job.partial
    # With a For Presentation twin the processing image goes to other_sop_uids.
    study2 = generate_uid()
    proc2 = inst(study2, "R-CC", pres=False, acquired="20250101000000")
    asm.add(proc2)
    for slot in FOUR:
        asm.add(inst(study2, slot, acquired="20240101000000"))
    assert jobs[1].study_instance_uid == study2
    assert jobs[1].image_for("R-CC").sop_class_uid == MG_FOR_PRESENTATION
    assert proc2.sop_uid in jobs[1].other_sop_uids


def test_extra_views_tomo_rdsr_in_other_sop_uids_sr_ignored(env):
    _db, asm, jobs, _ = env
    study = generate_uid()
    extras = [inst(study, None), inst(study, None, kind=KIND_TOMO),
              inst(study, None, kind=KIND_RDSR)]
    own_sr = inst(study, None, kind=KIND_SR)
    for x in [*extras, own_sr]:
        asm.add(x)
    for slot in FOUR:
        asm.add(inst(study, slot))
    assert sorted(jobs[0].other_sop_uids) == sorted(x.sop_uid for x in extras)


def test_partial_after_stable_timeout(env):
    db, asm, jobs, clock = env
    study = generate_uid()
    asm.add(inst(study, "R-CC"))
    asm.add(inst(study, "L-MLO"))
    clock.now += 59
    assert asm.check_stable() == 0
    asm.add(inst(study, None))  # any new instance restarts the timer
    clock.now += 59
    assert asm.check_stable() == 0
    clock.now += 2
    assert asm.check_stable() == 1
    job = jobs[0]
    assert job.partial and job.missing_views == ["L-CC", "R-MLO"]
    row = db.study(study)
    assert row["status"] == "queued" and row["partial"]
    assert row["missing_views"] == job.missing_views


def test_not_assessable(env):
    """Only quality-control images: failed at once, with the reason, and no report."""
    db, asm, jobs, clock = env
    study = generate_uid()
    qa = inst(study, None)
    asm.add(NewInstance(**{**qa.__dict__, "note": note(Reason.QUALITY_CONTROL, "FLATFIELD")}))
    clock.now += 61
    assert asm.check_stable() == 1
    assert jobs == []
    row = db.study(study)
    assert row["status"] == "failed" and "not assessable" in row["last_error"]
    assert "quality_control" in row["last_error"]
    assert db.last_errors(1)[0]["study_uid"] == study


def test_nothing_usable_is_still_reported_with_reasons(env):
    """A patient's images, none usable: queued without images, so that the result and the
    SR say why (the pipeline marks it not assessable)."""
    db, asm, jobs, clock = env
    study = generate_uid()
    spot = inst(study, None)
    asm.add(NewInstance(**{**spot.__dict__, "note": note(Reason.SPOT_COMPRESSION,
                                                         laterality="R", view="CC")}))
    tomo = inst(study, None, kind=KIND_TOMO)
    asm.add(tomo)  # stored before the reasons were coded: no note
    clock.now += 61
    assert asm.check_stable() == 1
    (job,) = jobs
    assert job.images == [] and job.missing_views == list(FOUR)
    assert [(u.image, u.slot, u.reason) for u in job.unused_images] == [
        (uid_hash(spot.sop_uid), "R-CC", Reason.SPOT_COMPRESSION),
        (uid_hash(tomo.sop_uid), None, Reason.TOMOSYNTHESIS)]
    assert db.study(study)["status"] == "queued"


def test_new_image_after_done_reassesses_and_supersedes(env):
    db, asm, jobs, clock = env
    study = generate_uid()
    for slot in FOUR:
        asm.add(inst(study, slot, acquired="20240101000000"))
    db.mark_processing(study, 1)
    db.mark_done(study, 1, json.dumps({"rev": 1}))
    assert db.study(study)["status"] == "done"
    # A tomosynthesis object does not re-open it; a retake does.
    asm.add(inst(study, None, kind=KIND_TOMO))
    assert db.study(study)["status"] == "done"
    retake = inst(study, "L-CC", acquired="20240101010000")
    asm.add(retake)
    assert db.study(study)["status"] == "collecting"
    clock.now += 61
    asm.check_stable()
    assert [j.revision for j in jobs] == [1, 2]
    assert jobs[1].image_for("L-CC").sop_instance_uid == retake.sop_uid
    # An old revision finishing late never overwrites the newer one.
    db.mark_done(study, 2, json.dumps({"rev": 2}))
    db.mark_done(study, 1, json.dumps({"rev": 1}))
    db.mark_failed(study, 1, "late failure of revision 1")
    row = db.study(study)
    assert row["status"] == "done" and row["result"] == {"rev": 2}
    assert row["result_revision"] == 2


def test_mark_processing_only_current_revision(env):
    db, asm, _jobs, _ = env
    study = generate_uid()
    for slot in FOUR:
        asm.add(inst(study, slot))
    db.mark_processing(study, 7)
    assert db.study(study)["status"] == "queued"
    db.mark_processing(study, 1)
    assert db.study(study)["status"] == "processing"
    db.mark_failed(study, 1, "decode error")
    row = db.study(study)
    assert row["status"] == "failed" and row["last_error"] == "decode error"


def test_resume_resubmits_queued_and_processing(tmp_path):
    db = StateDB(tmp_path / "s.sqlite3")
    jobs: list = []
    asm = StudyAssembler(db, jobs.append, stable_seconds=60)
    a, b = generate_uid(), generate_uid()
    for study in (a, b):
        for slot in FOUR:
            asm.add(inst(study, slot))
    db.mark_processing(b, 1)
    db.close()
    # A new process: same database, fresh assembler.
    db2 = StateDB(tmp_path / "s.sqlite3")
    again: list = []
    assert StudyAssembler(db2, again.append, stable_seconds=60).resume() == 2
    assert sorted(j.study_instance_uid for j in again) == sorted([a, b])
    assert [j.model_dump() for j in sorted(again, key=lambda j: j.study_instance_uid)] == \
        [j.model_dump() for j in sorted(jobs, key=lambda j: j.study_instance_uid)]
    db2.close()


def test_submit_failure_keeps_study_queued_and_is_retried(tmp_path):
    db = StateDB(tmp_path / "s.sqlite3")
    broker_up = [False]
    jobs: list = []

    def submit(job):
        if not broker_up[0]:
            raise ConnectionError("broker down")
        jobs.append(job)

    clock = Clock()
    asm = StudyAssembler(db, submit, stable_seconds=60, clock=clock)
    study = generate_uid()
    for slot in FOUR:
        asm.add(inst(study, slot))
    assert db.study(study)["status"] == "queued"
    assert "broker down" in db.last_errors(1)[0]["reason"]
    clock.now = 2e9  # the failure happened long ago (wall clock of the db row)
    assert asm.retry_submissions() == 0  # still down
    broker_up[0] = True
    assert asm.retry_submissions() == 1
    assert [j.study_instance_uid for j in jobs] == [study]
    assert asm.retry_submissions() == 0  # submitted once
    db.close()


@pytest.mark.parametrize("kw,key", [
    ({"AcquisitionDateTime": "20240102030405.12"}, "20240102030405.120000"),
    ({"AcquisitionDateTime": "20240102030405+0100"}, "20240102030405.000000"),
    ({"AcquisitionDate": "20240102", "AcquisitionTime": "0304"}, "20240102030400.000000"),
    ({"ContentDate": "20240102", "ContentTime": "030405.5"}, "20240102030405.500000"),
    ({}, ""),
    ({"AcquisitionDate": "garbage"}, ""),
])
def test_acquisition_key(kw, key):
    ds = mg("1.2.3", "R", "CC")
    for k, v in kw.items():
        setattr(ds, k, v)
    assert acquisition_key(ds) == key


def test_late_dose_report_reopens_own_sr_does_not(env):
    db, asm, jobs, clock = env
    study = generate_uid()
    for slot in FOUR:
        asm.add(inst(study, slot))
    db.mark_done(study, 1, "{}")
    asm.add(inst(study, None, kind=KIND_SR))  # e.g. our density SR routed back by the PACS
    assert db.study(study)["status"] == "done"
    dose = inst(study, None, kind=KIND_RDSR)
    asm.add(dose)
    assert db.study(study)["status"] == "collecting"
    clock.now += 61
    asm.check_stable()
    assert jobs[-1].revision == 2 and dose.sop_uid in jobs[-1].other_sop_uids


def test_status_says_why_a_study_was_not_assessable(tmp_path, capsys):
    """`status` shows the reasons of a study whose images were all kept out."""
    from mammo_density.cli import main

    db = StateDB(tmp_path / "data" / "state.sqlite3")
    clock = Clock()
    asm = StudyAssembler(db, [].append, stable_seconds=60, clock=clock)
    study = generate_uid()
    qa = inst(study, None)
    asm.add(NewInstance(**{**qa.__dict__, "note": note(Reason.QUALITY_CONTROL,
                                                       "header says FLATFIELD")}))
    clock.now += 61
    asm.check_stable()
    db.close()
    assert main(["-q", "status", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert f"failed     {study}" in out
    assert f"image {uid_hash(qa.sop_uid)} - quality_control: a quality-control image" in out
