"""Study assembly: which spooled image fills which screening slot, and when a study goes.

Rules (docs/architecture.md; the study rules themselves live in mammo_density/study/):

- Which images may fill a slot is the screening-image gate's rule
  (:mod:`mammo_density.study.gate`, applied at ingest); images it keeps out are stored,
  fill no slot and are listed in the job's ``unused_images`` with their reason.
- Which image fills each slot, and the retake order, is
  :func:`mammo_density.study.selection.choose` (shared with ``classify``).
- A study is queued as soon as it is complete (:mod:`mammo_density.study.slots`: all four
  slots hold a For Presentation image); otherwise,
  once ``stable_seconds`` pass without a new instance, it is queued from what it has
  (``partial=True`` with ``missing_views`` when a slot is empty). With no slot filled it
  is still queued when it holds a patient's image (the result and the SR then say that
  it is not assessable and why each image was not used); otherwise (nothing, or only
  quality-control images) it is marked failed as not assessable.
- The same SOP Instance UID again changes nothing (the file is replaced atomically).
- A new screening image or dose report for a study already queued or finished re-opens
  it: after ``stable_seconds`` without more, it is queued again as revision + 1, whose
  result supersedes the older one. Other new objects (tomosynthesis, modified views) of
  such a study are stored and join the next revision, without re-opening it. Structured
  reports other than dose reports (e.g. our own density SR routed back by a PACS) are
  stored but never re-open a study, so a PACS forwarding everything cannot cause a loop.
- Identity (:mod:`mammo_density.study.identity`): a study whose instances name different
  patients is never queued; it is held as ``conflicting`` with the reason (checked when
  an instance arrives and again when the study is queued), and stays so whatever arrives.
- Restarts: when the stable timer starts (at start-up), every collecting study's clock
  starts again: downtime is not quiet time, the sender gets ``stable_seconds`` to finish.
- Lost hand-overs: a study queued and handed over, but not picked up by a worker within
  ``resubmit_after`` seconds (its broker message lost, e.g. Redis restarted without
  persistence), is submitted again through the same ``submit``; the worker's claim
  (:meth:`~mammo_density.plugin.state.StateDB.mark_processing`) makes a duplicate
  message skip the revision instead of producing a second result.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mammo_density.job import JobImage, StudyJob
from mammo_density.logsetup import uid_hash
from mammo_density.plugin.state import InstanceRow, StateDB
from mammo_density.result import UnusedImage
from mammo_density.study.identity import Identity, conflict
from mammo_density.study.reasons import Reason
from mammo_density.study.selection import acquisition_key, choose
from mammo_density.study.slots import SLOTS
from mammo_density.study.sop import (
    IMAGE_KINDS,
    KIND_IMAGE,
    KIND_RDSR,
    KIND_SR,
    KIND_TOMO,
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    SOP_KINDS,
)
from mammo_density.study.unused import from_note, unused_image, worth_a_report

log = logging.getLogger(__name__)

@dataclass
class Selection:
    """The images chosen for the four slots, everything else of the study, and why each
    other image is not used."""

    images: dict[str, InstanceRow] = field(default_factory=dict)
    others: list[InstanceRow] = field(default_factory=list)
    unused: list[UnusedImage] = field(default_factory=list)
    complete: bool = False

    @property
    def missing(self) -> list[str]:
        return [slot for slot in SLOTS if slot not in self.images]


def select(rows: Iterable[InstanceRow]) -> Selection:
    """Choose one image per slot (:func:`mammo_density.study.selection.choose`)."""
    rows = list(rows)
    choice = choose(r for r in rows if r.kind == KIND_IMAGE and r.slot in SLOTS)
    used = {r.sop_uid for r in choice.images.values()}
    passed = {r.sop_uid: reason for r, reason in choice.passed_over}
    unused: list[UnusedImage] = []
    for r in rows:
        if r.kind not in IMAGE_KINDS or r.sop_uid in used:
            continue
        if r.sop_uid in passed:
            unused.append(unused_image(r.sop_uid, passed[r.sop_uid], slot=r.slot))
        else:
            unused.append(from_note(r.sop_uid, r.note, default=Reason.TOMOSYNTHESIS
                                    if r.kind == KIND_TOMO else Reason.NON_STANDARD_VIEW))
    others = [r for r in rows if r.sop_uid not in used and r.kind != KIND_SR]
    return Selection(images=choice.images, others=others, unused=unused,
                     complete=choice.complete)


def build_job(study_uid: str, revision: int, selection: Selection, *,
              calling_aet: str = "", peer_host: str = "") -> StudyJob:
    """The :class:`StudyJob` handed to the pipeline for a selection."""
    images = [JobImage(slot=slot, sop_instance_uid=row.sop_uid,
                       sop_class_uid=row.sop_class_uid)
              for slot, row in ((s, selection.images[s]) for s in SLOTS if s in selection.images)]
    missing = selection.missing
    return StudyJob(study_instance_uid=study_uid, revision=revision, images=images,
                    other_sop_uids=[r.sop_uid for r in selection.others], partial=bool(missing),
                    missing_views=missing, unused_images=selection.unused,
                    calling_aet=calling_aet, peer_host=peer_host)


@dataclass(frozen=True)
class NewInstance:
    """An instance just committed to the spool, as the assembler records it."""

    sop_uid: str
    study_uid: str
    sop_class_uid: str
    path: str
    kind: str
    slot: str | None = None
    for_presentation: bool = False
    acquired: str = ""
    instance_number: int | None = None
    transfer_syntax: str = ""
    note: str = ""
    identity: str = ""  # Identity.to_json() of the patient attributes


Submit = Callable[[StudyJob], object]


class StudyAssembler:
    """Records instances, decides when a study is ready, and hands it to ``submit``.

    Decisions are taken inside one SQLite ``BEGIN IMMEDIATE`` transaction per event, so
    concurrent associations (and a restarted process) queue each revision exactly once.
    ``submit`` is called after the commit; if it raises, the study stays queued and is
    submitted again by :meth:`retry_submissions` (run by :class:`StableTimer`) and by
    :meth:`resume` at the next start.

    Parameters
    ----------
    db
        The state database.
    submit
        ``submit(job)``: hands a study to the pipeline; must return quickly.
    stable_seconds
        Seconds without a new instance before an incomplete study is assessed anyway.
    clock
        Wall-clock time source (``time.time``); stable timers survive restarts.
    resubmit_after
        Seconds a handed-over study may wait for a worker before it is submitted again
        (default ``stable_seconds + 30``).
    """

    def __init__(self, db: StateDB, submit: Submit, *, stable_seconds: float,
                 clock: Callable[[], float] = time.time,
                 resubmit_after: float | None = None) -> None:
        self.db = db
        self.submit = submit
        self.stable_seconds = float(stable_seconds)
        self.clock = clock
        self.resubmit_after = float(resubmit_after if resubmit_after is not None
                                    else self.stable_seconds + 30.0)

    # --- events -------------------------------------------------------------------------
    def add(self, inst: NewInstance, *, calling_aet: str = "", peer_host: str = "") -> bool:
        """Record a committed instance; queue its study if now complete.

        Returns
        -------
        bool
            False when the SOP Instance UID was already known (a duplicate: nothing changes).
        """
        job: StudyJob | None = None
        with self.db.tx() as conn:
            now = self.clock()
            if self.db.get_instance(conn, inst.sop_uid) is not None:
                conn.execute("UPDATE instances SET times_received=times_received+1 "
                             "WHERE sop_uid=?", (inst.sop_uid,))
                return False
            conn.execute(
                "INSERT INTO instances(sop_uid, study_uid, sop_class_uid, transfer_syntax, "
                "path, kind, slot, for_presentation, acquired, instance_number, note, "
                "received_at, identity) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (inst.sop_uid, inst.study_uid, inst.sop_class_uid, inst.transfer_syntax,
                 inst.path, inst.kind, inst.slot, int(inst.for_presentation), inst.acquired,
                 inst.instance_number, inst.note, now, inst.identity or None))
            study = self.db.get_study(conn, inst.study_uid)
            if study is None:
                conn.execute(
                    "INSERT INTO studies(study_uid, status, created_at, updated_at, "
                    "last_instance_at, calling_aet, peer_host) VALUES (?,?,?,?,?,?,?)",
                    (inst.study_uid, "collecting", now, now, now, calling_aet, peer_host))
                status = "collecting"
            else:
                status = study["status"]
                reopens = (inst.kind == KIND_IMAGE and inst.slot is not None) or \
                    inst.kind == KIND_RDSR
                if status == "conflicting":
                    reopens = False  # held until an operator sorts it out
                if status == "collecting" or reopens:
                    if status != "collecting":
                        log.info("study %s: new %s after revision %d, re-opened",
                                 uid_hash(inst.study_uid), inst.slot or inst.kind,
                                 study["revision"])
                    status = "collecting"
                    conn.execute(
                        "UPDATE studies SET status='collecting', last_instance_at=?, "
                        "updated_at=?, calling_aet=?, peer_host=? WHERE study_uid=?",
                        (now, now, calling_aet or study["calling_aet"],
                         peer_host or study["peer_host"], inst.study_uid))
            if study is not None and status != "conflicting" and inst.identity and \
                    self._identity_conflict(conn, self.db.get_study(conn, inst.study_uid),
                                            now):
                # another patient slipped past the door (two associations at once)
                status = "conflicting"
            first_time = study is None or int(study["revision"]) == 0
            if status == "collecting" and first_time:
                # Only a never-submitted study goes at once; a re-opened one waits for
                # stable_seconds (a PACS re-sending a study must not queue it per image).
                selection = select(self.db.instances_of(conn, inst.study_uid))
                if selection.complete:
                    job = self._queue(conn, inst.study_uid, selection, now)
        if job is not None:
            self._submit(job)
        return True

    def patient_conflict(self, inst: NewInstance) -> str:
        """Why ``inst`` cannot join its study's instances (another patient), or ``""``."""
        if not inst.identity:
            return ""
        rows = self.db.instances(inst.study_uid)
        return conflict([_identity(r) for r in rows] + [Identity.from_json(inst.identity)])

    def hold_conflicting(self, study_uid: str, reason: str) -> None:
        """Hold the study as ``conflicting`` (never assessed as one exam; see the module
        docstring)."""
        with self.db.tx() as conn:
            study = self.db.get_study(conn, study_uid)
            now = self.clock()
            if study is None:
                conn.execute(
                    "INSERT INTO studies(study_uid, status, created_at, updated_at, "
                    "last_instance_at) VALUES (?,?,?,?,?)",
                    (study_uid, "collecting", now, now, now))
                study = self.db.get_study(conn, study_uid)
            self._hold(conn, study, reason, now)

    def _hold(self, conn, study, reason: str, now: float) -> None:
        study_uid = study["study_uid"]
        if study["status"] == "conflicting":  # held already: the first reason stands
            return
        # A new revision, with the hold as its result: a result of an older revision still
        # in a worker can no longer replace it (StateDB.mark_done).
        revision = int(study["revision"]) + 1
        result = {"study_instance_uid": study_uid, "revision": revision, "assessable": False,
                  "conflicting": True, "reason": reason}
        if study["status"] in ("done", "processing", "queued"):
            log.warning("study %s: %s after revision %d was %s: held; a result already "
                        "delivered for it must be reviewed", uid_hash(study_uid), reason,
                        study["revision"], study["status"])
        conn.execute(
            "UPDATE studies SET status='conflicting', revision=?, updated_at=?, "
            "last_error=?, result_json=?, result_revision=?, job_json=NULL "
            "WHERE study_uid=?",
            (revision, now, reason, json.dumps(result), revision, study_uid))
        self.db.log_error(conn, study_uid, revision, f"held as conflicting: {reason}", now)
        log.warning("study %s held as conflicting: %s", uid_hash(study_uid), reason)

    def check_stable(self, now: float | None = None) -> int:
        """Assess every collecting study quiet for ``stable_seconds``; return how many."""
        now = self.clock() if now is None else now
        cutoff = now - self.stable_seconds
        handled = 0
        for study_uid in self.db.collecting_due(cutoff):
            job: StudyJob | None = None
            with self.db.tx() as conn:
                study = self.db.get_study(conn, study_uid)
                if study is None or study["status"] != "collecting" or \
                        study["last_instance_at"] >= cutoff:
                    continue
                selection = select(self.db.instances_of(conn, study_uid))
                if selection.images or worth_a_report(selection.unused):
                    # nothing usable but a patient's images: the pipeline still reports
                    # the study as not assessable, with every image's reason, in an SR
                    job = self._queue(conn, study_uid, selection, now)
                elif self._identity_conflict(conn, study, now):
                    pass
                else:
                    self._not_assessable(conn, study, now, selection.unused)
            handled += 1
            if job is not None:
                self._submit(job)
        return handled

    def resume(self) -> int:
        """Submit again every study left queued or processing (after a restart)."""
        count = 0
        for study_uid, job_json in self.db.pending_jobs():
            try:
                job = StudyJob.model_validate_json(job_json)
            except ValueError as err:
                self.db.mark_failed(study_uid, _revision_of(job_json), f"bad stored job: {err}")
                continue
            log.info("study %s: resubmitting revision %d after restart",
                     uid_hash(study_uid), job.revision)
            self.db.set_submitted(study_uid, job.revision, self.clock())
            self._submit(job)
            count += 1
        return count

    def restart_clocks(self) -> int:
        """Give every collecting study a full ``stable_seconds`` from now (at start-up)."""
        count = self.db.restart_stable_clocks(self.clock())
        if count:
            log.info("%d collecting stud%s: quiet-time clock restarted (downtime is not "
                     "quiet time)", count, "y" if count == 1 else "ies")
        return count

    def resubmit_lost(self, now: float | None = None) -> int:
        """Submit again studies handed over more than ``resubmit_after`` seconds ago and
        not yet picked up by a worker (a broker message lost); return how many."""
        now = self.clock() if now is None else now
        count = 0
        for study_uid, job_json in self.db.lost_submissions(now - self.resubmit_after):
            try:
                job = StudyJob.model_validate_json(job_json)
            except ValueError:
                continue
            log.warning("study %s: revision %d not picked up by a worker after %g s: "
                        "submitted again", uid_hash(study_uid), job.revision,
                        self.resubmit_after)
            self.db.set_submitted(study_uid, job.revision, now)
            if self._submit(job):
                count += 1
        return count

    # --- helpers ------------------------------------------------------------------------
    def _identity_conflict(self, conn, study, now: float) -> bool:
        """Hold the study when its instances name different patients (the check at
        assessment: rows recorded before identities were kept are read from the spool)."""
        rows = self.db.instances_of(conn, study["study_uid"])
        reason = conflict(_identity(r) for r in rows)
        if reason:
            self._hold(conn, study, reason, now)
        return bool(reason)

    def _queue(self, conn, study_uid: str, selection: Selection,
               now: float) -> StudyJob | None:
        study = self.db.get_study(conn, study_uid)
        if self._identity_conflict(conn, study, now):
            return None
        revision = int(study["revision"]) + 1
        job = build_job(study_uid, revision, selection, calling_aet=study["calling_aet"],
                        peer_host=study["peer_host"])
        conn.execute(
            "UPDATE studies SET status='queued', revision=?, queued_at=?, updated_at=?, "
            "partial=?, missing_views=?, job_json=?, submissions=submissions+1, "
            "submitted_at=?, submit_failed_at=NULL WHERE study_uid=?",
            (revision, now, now, int(job.partial), json.dumps(job.missing_views),
             job.model_dump_json(), now, study_uid))
        if job.partial:
            log.info("study %s: queued revision %d, partial (missing %s)",
                     uid_hash(study_uid), revision, ",".join(job.missing_views))
        else:
            log.info("study %s: queued revision %d with all four views",
                     uid_hash(study_uid), revision)
        return job

    def _not_assessable(self, conn, study, now: float, unused: list[UnusedImage]) -> None:
        rows = self.db.instances_of(conn, study["study_uid"])
        kinds = sorted({r.kind if r.kind != KIND_IMAGE else "unslotted image" for r in rows})
        reason = ("not assessable: no CC or MLO screening view after "
                  f"{self.stable_seconds:g} s (received: {', '.join(kinds) or 'nothing'})")
        if unused:
            reason += "; images not used: " + "; ".join(
                f"image {u.image} {u.slot or '-'} {u.reason.value}: {u.text}" for u in unused)
        revision = int(study["revision"]) + 1
        conn.execute(
            "UPDATE studies SET status='failed', revision=?, updated_at=?, last_error=?, "
            "partial=0, missing_views=?, job_json=NULL WHERE study_uid=?",
            (revision, now, reason, json.dumps(list(SLOTS)), study["study_uid"]))
        self.db.log_error(conn, study["study_uid"], revision, reason, now)
        log.warning("study %s: %s", uid_hash(study["study_uid"]), reason)

    def _submit(self, job: StudyJob) -> bool:
        try:
            self.submit(job)
        except Exception as err:  # the study stays queued; retried by retry_submissions()
            log.error("study %s: submit of revision %d failed: %s",
                      uid_hash(job.study_instance_uid), job.revision, err)
            self.db.set_submit_failed(job.study_instance_uid, job.revision, str(err) or
                                      type(err).__name__)
            return False
        return True

    def retry_submissions(self, now: float | None = None) -> int:
        """Submit again queued studies whose hand-over failed (e.g. the broker was down),
        at most once per ``min(stable_seconds, 30)`` each; return how many went through."""
        now = self.clock() if now is None else now
        done = 0
        for study_uid, job_json in self.db.submit_retries_due(now - min(self.stable_seconds,
                                                                        30.0)):
            job = StudyJob.model_validate_json(job_json)
            if self._submit(job):
                self.db.set_submit_failed(study_uid, job.revision, None)
                log.info("study %s: revision %d submitted on retry", uid_hash(study_uid),
                         job.revision)
                done += 1
        return done


def _identity(row: InstanceRow) -> Identity | None:
    """The stored identity of an instance; read from its file for rows recorded before
    identities were kept (None when unreadable)."""
    if row.identity:
        return Identity.from_json(row.identity)
    try:
        import pydicom

        return Identity.of(pydicom.dcmread(row.path, stop_before_pixels=True))
    except Exception:
        return None


def _revision_of(job_json: str) -> int:
    try:
        return int(json.loads(job_json).get("revision", 0))
    except (ValueError, AttributeError):
        return 0


class StableTimer:
    """A thread running :meth:`StudyAssembler.check_stable` periodically."""

    def __init__(self, assembler: StudyAssembler, interval: float | None = None) -> None:
        self.assembler = assembler
        self.interval = interval or max(0.05, min(1.0, assembler.stable_seconds / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stable-timer", daemon=True)

    def start(self) -> StableTimer:
        """Restart the collecting studies' clocks (this runs at start-up), then tick."""
        try:
            self.assembler.restart_clocks()
        except Exception:  # the first tick would do the checks anyway
            log.exception("restarting the stable clocks failed")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.assembler.check_stable()
                self.assembler.retry_submissions()
                self.assembler.resubmit_lost()
            except Exception:  # keep the timer alive; the next pass retries
                log.exception("stable-timeout check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


__all__ = [
    "IMAGE_KINDS",
    "KIND_IMAGE",
    "KIND_RDSR",
    "KIND_SR",
    "KIND_TOMO",
    "MG_FOR_PRESENTATION",
    "MG_FOR_PROCESSING",
    "SOP_KINDS",
    "NewInstance",
    "Selection",
    "StableTimer",
    "StudyAssembler",
    "acquisition_key",
    "build_job",
    "select",
]
