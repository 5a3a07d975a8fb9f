"""Timer-side safety rules of the assembler: restart clocks, lost hand-overs, the claim."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid

from mammo_density.plugin.assembly import StableTimer, StudyAssembler
from mammo_density.plugin.state import StateDB
from tests.test_assembly import FOUR, Clock, inst


def make(tmp_path: Path, **kw):
    db = StateDB(tmp_path / "state.sqlite3")
    jobs: list = []
    clock = Clock()
    return db, StudyAssembler(db, jobs.append, stable_seconds=60, clock=clock, **kw), jobs, clock


def test_restart_gives_collecting_studies_a_full_stable_time(tmp_path):
    db, asm, jobs, clock = make(tmp_path)
    study = generate_uid()
    asm.add(inst(study, "R-CC"))
    clock.now += 3600  # the node was down for an hour
    restarted = StudyAssembler(db, jobs.append, stable_seconds=60, clock=clock)
    timer = StableTimer(restarted, interval=3600).start()  # start-up: clocks restart
    timer.stop()
    assert restarted.check_stable() == 0 and jobs == []
    clock.now += 59
    assert restarted.check_stable() == 0
    restarted.add(inst(study, "L-CC"))
    clock.now += 61
    assert restarted.check_stable() == 1
    assert len(jobs) == 1 and jobs[0].revision == 1
    db.close()


def test_lost_hand_over_resubmitted_until_picked_up(tmp_path):
    db, asm, jobs, clock = make(tmp_path, resubmit_after=30)
    study = generate_uid()
    for slot in FOUR:
        asm.add(inst(study, slot))
    assert len(jobs) == 1
    clock.now += 29
    assert asm.resubmit_lost() == 0
    clock.now += 2
    assert asm.resubmit_lost() == 1 and len(jobs) == 2
    assert jobs[1] == jobs[0]  # the same job: same study, same revision
    assert asm.resubmit_lost() == 0  # not again before another period
    clock.now += 31
    assert asm.resubmit_lost() == 1
    # a worker claims it: no more re-submissions; a duplicate copy cannot claim it again
    assert db.mark_processing(study, 1) is True
    assert db.mark_processing(study, 1) is False
    clock.now += 1000
    assert asm.resubmit_lost() == 0
    db.close()


def test_stale_claim_taken_over(tmp_path):
    db, asm, _jobs, _clock = make(tmp_path)
    study = generate_uid()
    for slot in FOUR:
        asm.add(inst(study, slot))
    assert db.mark_processing(study, 1, stale_after=-1.0) is True
    assert db.mark_processing(study, 1, stale_after=-1.0) is True  # claimant presumed dead
    assert db.mark_processing(study, 2) is False  # not the current revision
    db.close()
