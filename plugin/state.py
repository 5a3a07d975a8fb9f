"""State of every study and instance the node has received, in SQLite (WAL mode).

One database file (``settings.state_db``) is shared by the listener (``serve``) and the
pipeline's state sink: in-process, or in the Celery ``cpu`` workers, which run on the
listener's host (SQLite locking is not reliable over network file systems; ``gpu``
workers never open it). WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` transactions
make it safe across threads and processes of one host.

Study life cycle (``studies.status``)::

    collecting -> queued -> processing -> done
                     \\            \\-> failed
                      \\-> failed (not assessable: nothing to classify)
    queued/processing/done/failed -> collecting   (a new screening image or dose report
                                                   arrived: re-assessed as revision + 1)
    any -> conflicting   (its instances name different patients, or one was refused for
                          that: never assessed as one exam, no SR; an operator must sort
                          the study out in the PACS; see mammo_density.study.identity)

``revision`` is the revision of the latest submission; a result (or failure) of an older
revision is kept in the error log but never overwrites the newer one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("collecting", "queued", "processing", "done", "failed", "conflicting")
IN_FLIGHT = ("collecting", "queued", "processing")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    revision         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    queued_at        REAL,
    calling_aet      TEXT NOT NULL DEFAULT '',
    peer_host        TEXT NOT NULL DEFAULT '',
    partial          INTEGER NOT NULL DEFAULT 0,
    missing_views    TEXT NOT NULL DEFAULT '[]',
    job_json         TEXT,
    submissions      INTEGER NOT NULL DEFAULT 0,
    submit_failed_at REAL,
    submitted_at     REAL,
    result_json      TEXT,
    result_revision  INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS studies_status ON studies(status, last_instance_at);
CREATE TABLE IF NOT EXISTS instances (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid          TEXT NOT NULL UNIQUE,
    study_uid        TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL DEFAULT '',
    path             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    slot             TEXT,
    for_presentation INTEGER NOT NULL DEFAULT 0,
    acquired         TEXT NOT NULL DEFAULT '',
    instance_number  INTEGER,
    note             TEXT NOT NULL DEFAULT '',
    received_at      REAL NOT NULL,
    times_received   INTEGER NOT NULL DEFAULT 1,
    identity         TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS errors (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    revision  INTEGER NOT NULL DEFAULT 0,
    reason    TEXT NOT NULL
);
"""

# Columns added after the first release: (table, column, declaration) for older files.
_ADDED_COLUMNS = (("studies", "submitted_at", "REAL"), ("instances", "identity", "TEXT"),
                  ("studies", "claimed_by", "TEXT NOT NULL DEFAULT ''"))


@dataclass(frozen=True)
class InstanceRow:
    """One spooled instance as stored (see :mod:`mammo_density.plugin.assembly`)."""

    seq: int
    sop_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    kind: str
    slot: str | None
    for_presentation: bool
    acquired: str
    instance_number: int | None
    note: str
    received_at: float
    times_received: int
    identity: str | None = None


class StateDB:
    """The node's state database.

    Parameters
    ----------
    path
        SQLite file (created with its folder if missing).
    readonly
        Open an existing database for queries only (see
        :func:`mammo_density.datadir.connect_readonly`).
    """

    def __init__(self, path: Path | str, *, timeout: float = 30.0,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self._timeout = timeout
        # One connection per StateDB, used under a lock by every thread (pynetdicom runs
        # each association in a thread of its own: per-thread connections would pile up).
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        if readonly:  # `status`: queries only, nothing created or written (full disk)
            from mammo_density.datadir import connect_readonly

            self._db = connect_readonly(self.path, timeout=timeout)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._use() as conn:
            conn.executescript(_SCHEMA)
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    with suppress(sqlite3.OperationalError):  # another process added it
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    # --- connections and transactions ----------------------------------------------
    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                conn = sqlite3.connect(self.path, timeout=self._timeout,
                                       isolation_level=None, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
                self._db = conn
            yield self._db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): read-decide-write without races,
        across threads (the lock) and processes (SQLite's write lock)."""
        with self._use() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._use() as conn:
            return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    # --- used by the assembler (inside tx) ----------------------------------------------
    @staticmethod
    def get_study(conn: sqlite3.Connection, study_uid: str) -> sqlite3.Row | None:
        return conn.execute("SELECT * FROM studies WHERE study_uid=?", (study_uid,)).fetchone()

    @staticmethod
    def get_instance(conn: sqlite3.Connection, sop_uid: str) -> InstanceRow | None:
        row = conn.execute("SELECT * FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
        return _instance(row) if row else None

    @staticmethod
    def instances_of(conn: sqlite3.Connection, study_uid: str) -> list[InstanceRow]:
        rows = conn.execute("SELECT * FROM instances WHERE study_uid=? ORDER BY seq",
                            (study_uid,)).fetchall()
        return [_instance(r) for r in rows]

    @staticmethod
    def log_error(conn: sqlite3.Connection, study_uid: str, revision: int, reason: str,
                  now: float | None = None) -> None:
        conn.execute("INSERT INTO errors(at, study_uid, revision, reason) VALUES (?,?,?,?)",
                     (now or time.time(), study_uid, revision, reason[:2000]))

    def record_error(self, study_uid: str, reason: str, revision: int = 0) -> None:
        """Log a problem (e.g. a rejected instance) for ``status``."""
        with self.tx() as conn:
            self.log_error(conn, study_uid, revision, reason)

    # --- called by the pipeline ---------------------------------------------------------
    def mark_processing(self, study_uid: str, revision: int, *,
                        stale_after: float = 60.0, owner: str = "") -> bool:
        """The pipeline starts on ``revision`` of the study: claim it.

        Returns True when this caller holds the claim: the revision was queued, or was
        claimed more than ``stale_after`` seconds ago (the claiming task's hard time
        limit) by a task presumed dead (its message redelivered), or was claimed by the
        same non-empty ``owner`` (one submission of the study: its message redelivered
        after its worker process died, or its task retried after a transient error).
        False: another copy of the same task (a re-submission by the sweep while the
        first message still existed) is on it, or the revision is finished or
        superseded; the caller should skip it.
        """
        now = time.time()
        with self.tx() as conn:
            cur = conn.execute(
                "UPDATE studies SET status='processing', updated_at=?, claimed_by=? "
                "WHERE study_uid=? AND revision=? AND (status='queued' OR "
                "(status='processing' AND (updated_at<? OR (?<>'' AND claimed_by=?))))",
                (now, owner, study_uid, revision, now - stale_after, owner, owner))
            return cur.rowcount > 0

    def mark_done(self, study_uid: str, revision: int, result_json: str) -> None:
        """Store the result of ``revision``; it never replaces a newer revision's result."""
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                "UPDATE studies SET result_json=?, result_revision=?, updated_at=? "
                "WHERE study_uid=? AND result_revision<=?",
                (result_json, revision, now, study_uid, revision))
            conn.execute(
                "UPDATE studies SET status='done', last_error='', updated_at=? "
                "WHERE study_uid=? AND revision=? AND status IN ('queued','processing')",
                (now, study_uid, revision))

    def mark_failed(self, study_uid: str, revision: int, reason: str) -> None:
        """``revision`` could not be assessed (logged; the study's status changes only if
        this is still its latest revision)."""
        now = time.time()
        with self.tx() as conn:
            self.log_error(conn, study_uid, revision, reason, now)
            conn.execute(
                "UPDATE studies SET status='failed', last_error=?, updated_at=? "
                "WHERE study_uid=? AND revision=? AND status IN ('queued','processing')",
                (reason[:2000], now, study_uid, revision))

    # --- queries (status command, tests) ------------------------------------------------
    def study(self, study_uid: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return _study_dict(rows[0]) if rows else None

    def studies(self, status: str | None = None) -> list[dict[str, Any]]:
        if status:
            rows = self._all("SELECT * FROM studies WHERE status=? ORDER BY created_at",
                             (status,))
        else:
            rows = self._all("SELECT * FROM studies ORDER BY created_at")
        return [_study_dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for row in self._all("SELECT status, COUNT(*) n FROM studies GROUP BY status"):
            out[row["status"]] = row["n"]
        return out

    def instances(self, study_uid: str) -> list[InstanceRow]:
        with self._use() as conn:
            return self.instances_of(conn, study_uid)

    def instance(self, sop_uid: str) -> InstanceRow | None:
        with self._use() as conn:
            return self.get_instance(conn, sop_uid)

    def instance_count(self) -> int:
        return int(self._all("SELECT COUNT(*) FROM instances")[0][0])

    def known_paths(self) -> set[str]:
        return {r[0] for r in self._all("SELECT path FROM instances")}

    def oldest_in_flight(self) -> dict[str, Any] | None:
        rows = self._all(
            "SELECT * FROM studies WHERE status IN ('collecting','queued','processing') "
            "ORDER BY created_at LIMIT 1")
        return _study_dict(rows[0]) if rows else None

    def last_errors(self, limit: int = 10) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT * FROM errors ORDER BY id DESC LIMIT ?",
                                           (limit,))]

    def collecting_due(self, cutoff: float) -> list[str]:
        """Studies still collecting whose last instance arrived before ``cutoff``."""
        rows = self._all(
            "SELECT study_uid FROM studies WHERE status='collecting' AND last_instance_at<? "
            "ORDER BY last_instance_at", (cutoff,))
        return [r[0] for r in rows]

    def set_submit_failed(self, study_uid: str, revision: int, reason: str | None) -> None:
        """Note that handing ``revision`` to the pipeline failed (None: it succeeded)."""
        now = time.time()
        with self.tx() as conn:
            conn.execute("UPDATE studies SET submit_failed_at=?, submitted_at=COALESCE(?, "
                         "submitted_at) WHERE study_uid=? AND revision=?",
                         (now if reason else None, None if reason else now, study_uid,
                          revision))
            if reason:
                self.log_error(conn, study_uid, revision, f"submit failed: {reason}", now)

    def submit_retries_due(self, cutoff: float) -> list[tuple[str, str]]:
        """(study UID, job JSON) of queued studies whose submission failed before ``cutoff``."""
        rows = self._all(
            "SELECT study_uid, job_json FROM studies WHERE status='queued' AND job_json IS NOT "
            "NULL AND submit_failed_at IS NOT NULL AND submit_failed_at<? ORDER BY queued_at",
            (cutoff,))
        return [(r[0], r[1]) for r in rows]

    def restart_stable_clocks(self, now: float) -> int:
        """Start the quiet-time clock again for every collecting study (at start-up: the
        time the node was down is not quiet time, the sender may have been waiting for
        it); return how many."""
        with self.tx() as conn:
            return conn.execute(
                "UPDATE studies SET last_instance_at=? WHERE status='collecting' AND "
                "last_instance_at<?", (now, now)).rowcount

    def lost_submissions(self, cutoff: float) -> list[tuple[str, str]]:
        """(study UID, job JSON) of studies queued, handed over successfully, and not
        picked up by a worker since before ``cutoff``: their broker message may be lost."""
        rows = self._all(
            "SELECT study_uid, job_json FROM studies WHERE status='queued' AND job_json IS "
            "NOT NULL AND submit_failed_at IS NULL AND COALESCE(submitted_at, queued_at)<? "
            "ORDER BY queued_at", (cutoff,))
        return [(r[0], r[1]) for r in rows]

    def set_submitted(self, study_uid: str, revision: int, now: float) -> None:
        """Note when ``revision`` was last handed to the pipeline."""
        with self.tx() as conn:
            conn.execute("UPDATE studies SET submitted_at=? WHERE study_uid=? AND revision=?",
                         (now, study_uid, revision))

    def pending_jobs(self) -> list[tuple[str, str]]:
        """(study UID, job JSON) of every study queued or processing (to resubmit)."""
        rows = self._all(
            "SELECT study_uid, job_json FROM studies WHERE status IN ('queued','processing') "
            "AND job_json IS NOT NULL ORDER BY queued_at")
        return [(r[0], r[1]) for r in rows]


def _instance(row: sqlite3.Row) -> InstanceRow:
    return InstanceRow(
        seq=row["seq"], sop_uid=row["sop_uid"], study_uid=row["study_uid"],
        sop_class_uid=row["sop_class_uid"], transfer_syntax=row["transfer_syntax"],
        path=row["path"], kind=row["kind"], slot=row["slot"],
        for_presentation=bool(row["for_presentation"]), acquired=row["acquired"],
        instance_number=row["instance_number"], note=row["note"],
        received_at=row["received_at"], times_received=row["times_received"],
        # (absent from an older database opened read-only, where nothing is migrated)
        identity=row["identity"] if "identity" in row.keys() else None)  # noqa: SIM118


def _study_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["partial"] = bool(out["partial"])
    out["missing_views"] = json.loads(out["missing_views"] or "[]")
    out.pop("job_json", None)
    result = out.pop("result_json", None)
    out["result"] = json.loads(result) if result else None
    return out


__all__ = ["IN_FLIGHT", "STATUSES", "InstanceRow", "StateDB"]
