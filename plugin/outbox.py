"""The persistent SR outbox: write the SR first, then deliver it, retrying until it lands.

It carries every object the node writes back to the PACS: the density SR and the summary
image (a Secondary Capture, docs/sr.md) go through the same rows, retries and rules; each
object's kind is its Modality (``SR``, ``OT``), and supersession works per kind.

Layout under the data directory::

    outbox/<SOPInstanceUID>.dcm       SRs not yet delivered everywhere (and, with no
                                      destination configured, the local outbox itself)
    outbox/sent/<SOPInstanceUID>.dcm  SRs whose deliveries are all finished
    outbox.sqlite3                    one row per SR, one row per (SR, destination)

Rules:

- ``enqueue`` writes the file durably (temporary file, fsync, rename, fsync of the
  folder) *before* recording any delivery, so a crash leaves either no row or a row
  whose file exists.
- Destinations are decided by the outbox's owner, ``serve`` (``Outbox(owner=True)``),
  from its own settings: an SR enqueued by a Celery worker (``owner=False``) is recorded
  unrouted, and the owner gives it its delivery rows on its next poll. A worker started
  with another environment therefore cannot send SRs elsewhere, or nowhere. With no
  destination configured the owner logs a WARNING naming the outbox folder.
- One delivery row per SOPInstanceUID and destination: enqueueing the same SR again
  (a re-run of the same study and model, which gives the same UIDs) adds nothing and
  never sends it twice (its rows, whatever their state, are left as they are).
- A failed attempt increments ``attempts``, keeps ``last_error`` and waits
  ``min(retry_max, retry_base * 2**(attempts-1))`` seconds, with jitter (50-100 %).
  Everything is on disk, so retries survive a restart of ``serve``. Deliveries are
  retried without limit (a PACS that refuses today may be fixed tomorrow); ``status``
  shows them with their last error.
- Supersession: an SR of a newer revision of the same study (a different
  SOPInstanceUID; the revision is the SR's InstanceNumber) supersedes the older SR's
  *undelivered* rows (an object supersedes only objects of its own kind: the summary
  image of a revision never stops that revision's SR): the older one is not sent any
  more, because it would put an outdated result beside the current one in the PACS.
  SRs already delivered stay delivered (an SR cannot be recalled). An SR that arrives
  after a newer one of the same study is written to disk but recorded as superseded
  straight away.
- ``@caller`` sends back to the AE that sent the study: its AE title and peer address
  come with the job, the port from ``settings.caller_port``. Without a port (or an
  unknown caller) the row is recorded as ``skipped`` with the reason, shown by ``status``.
- A row is claimed (its ``next_try`` pushed forward) in a transaction before sending,
  so two outbox loops on the same data directory never send the same row at once.
- Restart: when ``serve``'s loop starts (it holds the data directory's lock, so it is the
  only sender) every pending row is due at once: rows claimed by a process that crashed
  mid-send and rows waiting out a backoff are tried straight away. A PACS that accepts a
  delivery makes that destination's other waiting rows due at once too, so an outage does
  not leave SRs behind for the rest of their backoff. ``mammo-density retry`` makes rows
  due now from the command line.
- An SR being sent when ``serve`` was killed may have reached the PACS before its row was
  marked delivered; it is sent again after the restart. C-STORE and STOW-RS offer no
  "did you get it?" to ask first, and the copy is harmless: it is the same object with the
  same SOP Instance UID, which a PACS stores once (Orthanc keeps the first copy and answers
  success; tests/test_outbox_restart.py checks it).
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from mammo_density.config import Destination, Settings, mask_url
from mammo_density.durable import durable_write, fsync_dir
from mammo_density.logsetup import uid_hash
from mammo_density.plugin.send import DeliveryError, c_store, client_tls_context, stow_rs

log = logging.getLogger(__name__)

DB_NAME = "outbox.sqlite3"
SENT_DIR = "sent"
BATCH = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS srs (
    sop_uid      TEXT PRIMARY KEY,
    study_uid    TEXT NOT NULL,
    series_uid   TEXT NOT NULL DEFAULT '',
    revision     INTEGER NOT NULL DEFAULT 1,
    path         TEXT NOT NULL,
    calling_aet  TEXT NOT NULL DEFAULT '',
    peer_host    TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    kind         TEXT NOT NULL DEFAULT 'SR',
    routed       INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS srs_study ON srs(study_uid);
CREATE TABLE IF NOT EXISTS deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid      TEXT NOT NULL REFERENCES srs(sop_uid),
    destination  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    ae_title     TEXT NOT NULL DEFAULT '',
    host         TEXT NOT NULL DEFAULT '',
    port         INTEGER NOT NULL DEFAULT 0,
    url          TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    next_try     REAL NOT NULL,
    created_at   REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (sop_uid, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_try);
"""

PENDING, DELIVERED, SKIPPED, SUPERSEDED = "pending", "delivered", "skipped", "superseded"
DIMSE_TLS = "dimse-tls"  # the ``kind`` of a tls:AET@host:port delivery
#: Set by ``enqueue``: a delivery loop in the same process starts its next round at once
#: instead of at its next tick (the SR and then the summary image go out as soon as each
#: is written; enqueues from other processes are seen at the tick).
_WORK = threading.Event()
_CLAIM_SECONDS = 300.0  # a claimed row is not picked up again for this long (crash guard)


@dataclass(frozen=True)
class _Target:
    """A destination resolved for one SR (``@caller`` becomes the caller's address)."""

    key: str
    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    skip_reason: str = ""


def write_durably(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file at ``path``: temporary file, fsync, rename, fsync."""
    return durable_write(path, lambda fh: ds.save_as(fh, enforce_file_format=True))


class Outbox:
    """Durable, retrying delivery of SRs to ``settings.sr_destinations``.

    Parameters
    ----------
    settings
        The node's settings (data directory; for the owner also the destinations).
    owner
        True in ``serve``, which owns the outbox: it decides the destinations (at
        enqueue, and for SRs enqueued by others at :meth:`route_new`) and delivers.
        False in a Celery worker: :meth:`enqueue` only stores the SR.
    readonly
        ``status``: queries only, nothing created or written.
    """

    def __init__(self, settings: Settings, *, owner: bool = True,
                 readonly: bool = False) -> None:
        self.settings = settings
        self.owner = owner
        self.dir = Path(settings.outbox_dir)
        self.sent_dir = self.dir / SENT_DIR
        self.db_path = Path(settings.data_dir) / DB_NAME
        self.readonly = readonly  # `status`: queries only, nothing created or written
        self._lock = threading.Lock()  # one deliver_due at a time per instance
        if readonly:
            if not self.db_path.exists():
                raise FileNotFoundError(f"no SR outbox database: {self.db_path}")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(srs)")}
            if "kind" not in columns:  # an outbox written before the summary image
                db.execute("ALTER TABLE srs ADD COLUMN kind TEXT NOT NULL DEFAULT 'SR'")
            if "routed" not in columns:  # an outbox from before routing by the owner
                db.execute("ALTER TABLE srs ADD COLUMN routed INTEGER NOT NULL DEFAULT 1")

    # --- database -------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            from mammo_density.datadir import connect_readonly

            db = connect_readonly(self.db_path)
        else:
            db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- destinations ---------------------------------------------------------------
    def _targets(self, calling_aet: str, peer_host: str) -> list[_Target]:
        targets = []
        for dest in self.settings.sr_destinations:
            targets.append(self._resolve(dest, calling_aet.strip(), peer_host.strip()))
        return targets

    def _resolve(self, dest: Destination, calling_aet: str, peer_host: str) -> _Target:
        if dest.kind == "dimse":
            return _Target(str(dest), DIMSE_TLS if dest.tls else "dimse", dest.ae_title,
                           dest.host, dest.port)
        if dest.kind == "dicomweb":
            return _Target(dest.url, "dicomweb", url=dest.url)
        port = int(self.settings.caller_port or 0)
        if calling_aet and peer_host and port:
            return _Target(f"@caller {calling_aet}@{peer_host}:{port}", "dimse", calling_aet,
                           peer_host, port)
        reason = ("caller_port is not configured" if not port
                  else "the study came without a calling AE title and peer address")
        return _Target(f"@caller {calling_aet or '?'}@{peer_host or '?'}", "caller",
                       calling_aet, peer_host, port, skip_reason=f"@caller skipped: {reason}")

    # --- public API -----------------------------------------------------------------
    def enqueue(self, sr: Dataset, *, study_uid: str, calling_aet: str = "",
                peer_host: str = "") -> Path:
        """Write ``sr`` durably to the outbox; the owner then records one delivery per
        destination (a non-owner leaves that to the owner's :meth:`route_new`).

        Idempotent per SOPInstanceUID: the same SR enqueued again is not sent again.
        Returns the SR file's path (under ``outbox/`` or ``outbox/sent/``).
        """
        sop_uid = str(sr.SOPInstanceUID)
        if str(sr.get("StudyInstanceUID", study_uid)) != study_uid:
            raise ValueError("enqueue: study_uid differs from the SR's StudyInstanceUID")
        revision = int(sr.get("InstanceNumber", 1) or 1)
        kind = str(sr.get("Modality", "") or "SR").upper()
        with self._connect() as db:
            known = db.execute("SELECT path FROM srs WHERE sop_uid = ?", (sop_uid,)).fetchone()
        if known is not None:
            # The same SR again (same study, model and images): nothing new to send.
            path = Path(known["path"])
            if not path.exists():
                path = write_durably(sr, self.dir / f"{sop_uid}.dcm")
                with self._transaction() as db:
                    db.execute("UPDATE srs SET path = ? WHERE sop_uid = ?", (str(path), sop_uid))
            log.info("SR already in the outbox", extra={"sr": uid_hash(sop_uid)})
            return path
        path = write_durably(sr, self.dir / f"{sop_uid}.dcm")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO srs (sop_uid, study_uid, series_uid, revision, path, calling_aet,"
                " peer_host, created_at, kind, routed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT(sop_uid) DO UPDATE SET path = excluded.path",
                (sop_uid, study_uid, str(sr.get("SeriesInstanceUID", "")), revision, str(path),
                 calling_aet, peer_host, time.time(), kind),
            )
        if not self.owner:
            log.info("SR stored in the outbox; serve decides its destinations",
                     extra={"study": uid_hash(study_uid), "sr": uid_hash(sop_uid)})
            return path
        self._route(sop_uid)
        return self._path_of(sop_uid) or path

    def route_new(self) -> int:
        """Give every SR stored by a non-owner its delivery rows; return how many."""
        if not self.owner:
            return 0
        with self._connect() as db:
            new = [r["sop_uid"] for r in db.execute(
                "SELECT sop_uid FROM srs WHERE routed = 0 ORDER BY created_at").fetchall()]
        for sop_uid in new:
            self._route(sop_uid)
        return len(new)

    def _route(self, sop_uid: str) -> None:
        """Record one delivery per destination of this owner's settings (once)."""
        now = time.time()
        with self._transaction() as db:
            sr = db.execute("SELECT * FROM srs WHERE sop_uid = ? AND routed = 0",
                            (sop_uid,)).fetchone()
            if sr is None:  # routed already (by another loop of the same owner)
                return
            study_uid, revision, kind = sr["study_uid"], int(sr["revision"]), sr["kind"]
            targets = self._targets(sr["calling_aet"], sr["peer_host"])
            newer = db.execute(
                "SELECT 1 FROM srs WHERE study_uid = ? AND kind = ? AND sop_uid != ?"
                " AND revision > ? LIMIT 1", (study_uid, kind, sop_uid, revision),
            ).fetchone()
            for t in targets:
                status, error = PENDING, ""
                if t.skip_reason:
                    status, error = SKIPPED, t.skip_reason
                elif newer is not None:
                    status, error = SUPERSEDED, "a newer revision of the study was enqueued"
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (sop_uid, destination, kind, ae_title,"
                    " host, port, url, status, last_error, next_try, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sop_uid, t.key, t.kind, t.ae_title, t.host, t.port, t.url, status, error,
                     now, now),
                )
            db.execute("UPDATE srs SET routed = 1 WHERE sop_uid = ?", (sop_uid,))
            if newer is None:
                superseded = db.execute(
                    "UPDATE deliveries SET status = ?, last_error = ? WHERE status = ? AND"
                    " sop_uid IN (SELECT sop_uid FROM srs WHERE study_uid = ? AND kind = ?"
                    " AND sop_uid != ? AND revision <= ?)",
                    (SUPERSEDED, "superseded by a newer SR of the study", PENDING, study_uid,
                     kind, sop_uid, revision),
                ).rowcount
                if superseded:
                    log.info("superseded %d older SR deliveries", superseded,
                             extra={"study": uid_hash(study_uid)})
        extra = {"study": uid_hash(study_uid), "sr": uid_hash(sop_uid)}
        if targets:
            log.info("SR enqueued for %d destination(s)", len(targets), extra=extra)
        else:
            log.warning("SR kept in %s: no SR destination is configured (sr_destinations)",
                        self.dir, extra=extra)
        _WORK.set()
        self._maybe_retire(sop_uid)

    def deliver_due(self) -> int:
        """Route new SRs, then attempt every delivery that is due; return how many
        succeeded now."""
        with self._lock:
            self.route_new()
            delivered = 0
            for row in self._claim_due():
                if self._attempt(row):
                    delivered += 1
            return delivered

    def retry_now(self, destination: str | None = None) -> int:
        """Make pending deliveries (of one destination, as ``status`` shows it, or all) due
        now, claims of a crashed process included; return how many."""
        sql = "UPDATE deliveries SET next_try = ? WHERE status = ?"
        params: tuple = (time.time(), PENDING)
        if destination:
            sql += " AND destination = ?"
            params += (destination,)
        with self._transaction() as db:
            return db.execute(sql, params).rowcount

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Deliver due SRs every ``interval`` seconds, and at once after an ``enqueue`` in
        this process, until ``stop`` is set (seen within ``interval``); at start, every
        pending delivery is made due (see the restart rule above)."""
        log.info("SR outbox running (%d destination(s))", len(self.settings.sr_destinations))
        try:
            due = self.retry_now()
        except sqlite3.Error:
            log.exception("SR outbox: pending deliveries not rescheduled at start")
            due = 0
        if due:
            log.info("SR outbox: %d undelivered SR deliveries due now (start-up)", due)
        while not stop.is_set():
            _WORK.clear()
            try:
                self.deliver_due()
            except Exception:  # never let the loop die; the rows stay on disk
                log.exception("SR outbox loop error")
            _WORK.wait(interval)  # a tick, or sooner when something was enqueued

    def pending(self, limit: int = 200) -> list[dict[str, Any]]:
        """Undelivered SR deliveries (pending, or skipped with a reason), oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.*, s.study_uid FROM deliveries d JOIN srs s USING (sop_uid)"
                " WHERE d.status IN (?, ?) ORDER BY d.created_at, d.id LIMIT ?",
                (PENDING, SKIPPED, limit),
            ).fetchall()
        return [{
            "study": uid_hash(r["study_uid"]),
            "sr": uid_hash(r["sop_uid"]),
            "destination": mask_url(r["destination"]) if r["kind"] == "dicomweb"
            else r["destination"],
            "status": r["status"],
            "attempts": r["attempts"],
            "last_error": r["last_error"],
            "next_try": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["next_try"])),
        } for r in rows]

    def deliveries(self, sop_uid: str) -> list[dict[str, Any]]:
        """Every delivery row of one SR (for tests and diagnostics)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM deliveries WHERE sop_uid = ? ORDER BY id",
                              (sop_uid,)).fetchall()
        return [dict(r) for r in rows]

    # --- internals ------------------------------------------------------------------
    def _path_of(self, sop_uid: str) -> Path | None:
        with self._connect() as db:
            row = db.execute("SELECT path FROM srs WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return Path(row["path"]) if row else None

    def _claim_due(self) -> list[sqlite3.Row]:
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT d.*, s.path, s.study_uid FROM deliveries d JOIN srs s USING (sop_uid)"
                " WHERE d.status = ? AND d.next_try <= ? ORDER BY d.next_try LIMIT ?",
                (PENDING, now, BATCH),
            ).fetchall()
            for r in rows:
                db.execute("UPDATE deliveries SET next_try = ? WHERE id = ?",
                           (now + _CLAIM_SECONDS, r["id"]))
        return rows

    def _backoff(self, attempts: int) -> float:
        base = float(self.settings.sr_retry_base_seconds)
        cap = float(self.settings.sr_retry_max_seconds)
        delay = min(cap, base * (2 ** max(0, attempts - 1)))
        return delay * random.uniform(0.5, 1.0)

    def _attempt(self, row: sqlite3.Row) -> bool:
        timeout = float(self.settings.sr_timeout_seconds)
        extra = {"study": uid_hash(row["study_uid"]), "sr": uid_hash(row["sop_uid"])}
        try:
            ds = pydicom.dcmread(row["path"])
            s = self.settings
            if row["kind"] == "dicomweb":
                note = stow_rs(ds, url=row["url"], timeout=timeout, ca=s.sr_tls_ca,
                               cert=s.sr_tls_cert, key=s.sr_tls_key)
            else:
                tls = (client_tls_context(s.sr_tls_ca, s.sr_tls_cert, s.sr_tls_key)
                       if row["kind"] == DIMSE_TLS else None)
                note = c_store(ds, ae_title=row["ae_title"], host=row["host"], port=row["port"],
                               calling_aet=s.sr_calling_aet, timeout=timeout, tls=tls)
        except Exception as exc:  # any failure is recorded and retried; the loop goes on
            error = str(exc) if isinstance(exc, DeliveryError) else \
                f"{type(exc).__name__}: {exc}"
            attempts = row["attempts"] + 1
            next_try = time.time() + self._backoff(attempts)
            with self._transaction() as db:
                db.execute("UPDATE deliveries SET attempts = ?, last_error = ?, next_try = ?"
                           " WHERE id = ? AND status = ?",
                           (attempts, error[:500], next_try, row["id"], PENDING))
            log.warning("SR delivery to %s failed (attempt %d): %s", self._shown(row),
                        attempts, error, extra=extra)
            return False
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE deliveries SET status = ?, attempts = attempts + 1,"
                       " last_error = '', delivered_at = ? WHERE id = ?",
                       (DELIVERED, now, row["id"]))
            # The destination works again: what waits for it need not sit out its backoff.
            # (Rows of the batch being sent are among them: this loop sends them next anyway.)
            db.execute("UPDATE deliveries SET next_try = ? WHERE destination = ? AND"
                       " status = ? AND next_try > ?",
                       (now, row["destination"], PENDING, now))
        log.info("SR delivered to %s (%s)", self._shown(row), note, extra=extra)
        self._maybe_retire(row["sop_uid"])
        return True

    @staticmethod
    def _shown(row: sqlite3.Row) -> str:
        return mask_url(row["destination"]) if row["kind"] == "dicomweb" else row["destination"]

    def _maybe_retire(self, sop_uid: str) -> None:
        """Move an SR to ``sent/`` once it was delivered and nothing is left to send."""
        with self._transaction() as db:
            counts = dict(db.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE sop_uid = ? GROUP BY status",
                (sop_uid,)).fetchall())
            if counts.get(PENDING) or not counts.get(DELIVERED):
                return
            row = db.execute("SELECT path FROM srs WHERE sop_uid = ?", (sop_uid,)).fetchone()
            src = Path(row["path"])
            if src.parent == self.sent_dir or not src.exists():
                return
            self.sent_dir.mkdir(parents=True, exist_ok=True)
            dst = self.sent_dir / src.name
            os.replace(src, dst)
            fsync_dir(self.sent_dir)
            db.execute("UPDATE srs SET path = ? WHERE sop_uid = ?", (str(dst), sop_uid))


__all__ = ["DELIVERED", "PENDING", "SKIPPED", "SUPERSEDED", "Outbox", "write_durably"]
