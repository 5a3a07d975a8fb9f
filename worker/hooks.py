"""Screening-programme hooks: every result, delivered durably to each configured hook.

A hook is a Python callable ``hook(payload: dict) -> None``. Hooks that also take a
``settings`` keyword (the built-ins do) get the node's settings. A hook is named

- by an entry point in the group ``mammo_density.hooks`` (built in: ``webhook``, ``fhir``,
  ``registry``; a site package can add its own), or
- as ``module:callable`` in ``settings.hooks``.

Active hooks: ``registry`` (unless ``settings.registry_enabled`` is false), ``webhook``
(when ``settings.webhook_url`` is set), ``fhir`` (FHIR Observations, when
``settings.fhir_url`` is set) and every name in ``settings.hooks``.

:func:`dispatch` writes one row per hook and event into an SQLite queue under
``data_dir`` (``hooks.sqlite3``, WAL) and returns at once: it never raises into the
pipeline and never blocks the SR. Which hooks an event gets is decided by the queue's
owner, ``serve``: a Celery worker holds the event (``dispatch(..., route=False)``) and
``serve``'s queue gives it the hooks of its own settings before each delivery round
(:meth:`HookQueue.route_new`), as the outbox does with SR destinations.
:class:`HookQueue` delivers due rows (``serve`` runs
``HookQueue(settings).run_forever`` in a thread): a hook that raises is retried with
exponential backoff (2 s doubling up to ``settings.hook_retry_max_seconds``), forever, and
the queue survives restarts. Each row is claimed with a lease before it runs, so two
processes never deliver the same row at the same time; a process killed mid-delivery
leaves the row to be retried after the lease, which is why receivers de-duplicate on the
event id.

The payload is the result JSON (density, dose, recommendations, model, study UIDs), with
the MQSA report sentence as ``mqsa_sentence`` beside each category (exam and breasts), plus
``event_id`` (sha256 of study UID, revision and model sha256: stable across retries and
re-runs), ``event_time`` (UTC, when dispatched) and ``schema``. Patient identifiers are
added under ``patient`` only when ``settings.hooks_include_patient_ids`` is true.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from mammo_density.logsetup import uid_hash
from mammo_density.result import StudyResult
from mammo_density.wording import payload_wording

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mammo_density.hooks"
PAYLOAD_SCHEMA = "mammo-density/hook-payload/1"
RETRY_BASE_SECONDS = 2.0
#: ``pending()``'s hook name for an event a worker queued and the owner has not routed yet
UNROUTED = "(to be routed)"
LEASE_SECONDS = 300.0

Hook = Callable[..., None]
_READY: set[str] = set()  # queue files whose schema exists (this process)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hook_events (
    event_id    TEXT NOT NULL,
    hook        TEXT NOT NULL,
    study_hash  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL,
    last_error  TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    done_at     REAL,
    PRIMARY KEY (event_id, hook)
);
CREATE INDEX IF NOT EXISTS hook_events_due ON hook_events (state, next_at);
CREATE TABLE IF NOT EXISTS hook_unrouted (
    event_id    TEXT PRIMARY KEY,
    study_hash  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""


def event_id(result: StudyResult) -> str:
    """Stable id of a result event: sha256 of study UID, revision and model sha256."""
    model_sha = result.model.sha256 if result.model else ""
    text = f"{result.study_instance_uid}|{result.revision}|{model_sha}"
    return hashlib.sha256(text.encode()).hexdigest()


def build_payload(result: StudyResult, settings: Any, *,
                  patient: dict | None = None) -> dict[str, Any]:
    """The JSON document every hook receives."""
    payload: dict[str, Any] = payload_wording(result.model_dump(mode="json"))
    payload["schema"] = PAYLOAD_SCHEMA
    payload["event_id"] = event_id(result)
    payload["event_time"] = datetime.now(UTC).isoformat(timespec="seconds")
    if getattr(settings, "hooks_include_patient_ids", False) and patient:
        payload["patient"] = {k: str(v) for k, v in patient.items()
                              if k in ("PatientID", "PatientName", "IssuerOfPatientID",
                                       "PatientBirthDate", "PatientSex")}
    return payload


# --- hook resolution -------------------------------------------------------------------------

def _builtin(name: str) -> Hook | None:
    if name == "webhook":
        from mammo_density.worker.webhook import webhook_hook
        return webhook_hook
    if name == "registry":
        from mammo_density.worker.registry import registry_hook
        return registry_hook
    if name == "fhir":
        from mammo_density.worker.fhir import fhir_hook
        return fhir_hook
    return None


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed hooks (read once per process: scanning the metadata takes milliseconds)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve_hook(name: str) -> Hook:
    """The callable behind a hook name (entry point, built-in, or ``module:callable``)."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        obj: Any = import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    else:
        ep = _entry_points().get(name)
        obj = ep.load() if ep is not None else _builtin(name)
        if obj is None:
            raise LookupError(f"no hook named {name!r} in entry-point group {ENTRY_POINT_GROUP}")
    if not callable(obj):
        raise TypeError(f"hook {name!r} is not callable")
    return obj


def active_hooks(settings: Any) -> list[str]:
    """Names of the hooks every event goes to, in order."""
    names: list[str] = []
    if getattr(settings, "registry_enabled", True):
        names.append("registry")
    if getattr(settings, "webhook_url", ""):
        names.append("webhook")
    if getattr(settings, "fhir_url", ""):
        names.append("fhir")
    for name in getattr(settings, "hooks", []) or []:
        if name not in names:
            names.append(name)
    return names


def available_hooks(settings: Any) -> list[str]:
    """:func:`active_hooks` that resolve here; one that does not is logged and left out."""
    names = []
    for name in active_hooks(settings):
        try:
            resolve_hook(name)
            names.append(name)
        except Exception as err:
            log.error("hook %s not available, skipped: %s", name, err)
    return names


def _call(hook: Hook, payload: dict, settings: Any) -> None:
    try:
        params = inspect.signature(hook).parameters
    except (TypeError, ValueError):
        params = {}
    if "settings" in params:
        hook(payload, settings=settings)
    else:
        hook(payload)


# --- the queue -------------------------------------------------------------------------------

def pending_rows(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Events not yet delivered, one row per hook (no payloads, no patient data); an event
    a worker holds for the owner to route is one row with ``hook`` :data:`UNROUTED`. Works
    on a queue file written before held events existed."""
    held = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                      " AND name = 'hook_unrouted'").fetchone() is not None
    sql = ("SELECT event_id, hook, study_hash, attempts, next_at, last_error, created_at"
           " FROM hook_events WHERE state = 'pending'")
    params: tuple = ()
    if held:
        sql += (" UNION ALL SELECT event_id, ?, study_hash, 0, created_at, '', created_at"
                " FROM hook_unrouted")
        params = (UNROUTED,)
    rows = db.execute(sql + " ORDER BY created_at", params).fetchall()
    names = ("event_id", "hook", "study_hash", "attempts", "next_at", "last_error",
             "created_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


class HookQueue:
    """Durable, restartable delivery of hook events (SQLite under ``settings.data_dir``)."""

    def __init__(self, settings: Any, *, path: Path | None = None) -> None:
        self.settings = settings
        self.path = Path(path) if path else Path(settings.data_dir) / "hooks.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_backoff = float(getattr(settings, "hook_retry_max_seconds", 3600.0))
        self._hooks: dict[str, Hook] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        key = str(self.path.resolve())
        if key not in _READY:
            with self._conn() as db:
                db.executescript(_SCHEMA)
            _READY.add(key)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a queued event survives a power cut
        db.row_factory = sqlite3.Row
        return db

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, kept open (closing a WAL database checkpoints it,
        which costs more than the insert)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the calling thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # enqueue ---------------------------------------------------------------------------
    def enqueue(self, payload: dict[str, Any], hooks: list[str]) -> int:
        """One row per hook for this event; rows that exist are left alone. Returns the
        number of new rows."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        now = time.time()
        study = uid_hash(payload.get("study_instance_uid"))
        with self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            added = self._insert(db, payload["event_id"], hooks, study, text, now)
            db.execute("COMMIT")
        return added

    @staticmethod
    def _insert(db: sqlite3.Connection, eid: str, hooks: list[str], study: str, text: str,
                created: float) -> int:
        added = 0
        for name in hooks:
            cur = db.execute(
                "INSERT OR IGNORE INTO hook_events (event_id, hook, study_hash, payload,"
                " next_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (eid, name, study, text, time.time(), created))
            added += cur.rowcount
        return added

    def hold(self, payload: dict[str, Any]) -> bool:
        """Keep the event for the queue's owner to route (:meth:`route_new`): a Celery
        worker queues events without deciding which hooks get them. False when the event
        is held already."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        with self._conn() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO hook_unrouted (event_id, study_hash, payload,"
                " created_at) VALUES (?, ?, ?, ?)",
                (payload["event_id"], uid_hash(payload.get("study_instance_uid")), text,
                 time.time()))
        return cur.rowcount > 0

    def route_new(self) -> int:
        """Give every held event one row per hook of this queue's settings (the owner's:
        ``serve``); returns how many events were routed."""
        with self._conn() as db:
            held = db.execute("SELECT event_id FROM hook_unrouted ORDER BY created_at"
                              ).fetchall()
            if not held:
                return 0
            names = available_hooks(self.settings)
            routed = 0
            for row in held:
                db.execute("BEGIN IMMEDIATE")
                event = db.execute("SELECT * FROM hook_unrouted WHERE event_id = ?",
                                   (row["event_id"],)).fetchone()
                if event is not None:  # else another loop of the owner routed it meanwhile
                    self._insert(db, event["event_id"], names, event["study_hash"],
                                 event["payload"], event["created_at"])
                    db.execute("DELETE FROM hook_unrouted WHERE event_id = ?",
                               (event["event_id"],))
                    routed += 1
                db.execute("COMMIT")
        if routed:
            log.info("routed %d held event(s) to %d hook(s)", routed, len(names))
        return routed

    # deliver ---------------------------------------------------------------------------
    def _hook(self, name: str) -> Hook:
        with self._lock:
            if name not in self._hooks:
                self._hooks[name] = resolve_hook(name)
            return self._hooks[name]

    def _claim(self, db: sqlite3.Connection, now: float, limit: int) -> list[sqlite3.Row]:
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(
            "SELECT event_id, hook, payload, attempts, next_at FROM hook_events"
            " WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?",
            (now, limit)).fetchall()
        for row in rows:
            db.execute("UPDATE hook_events SET next_at = ? WHERE event_id = ? AND hook = ?",
                       (now + LEASE_SECONDS, row["event_id"], row["hook"]))
        db.execute("COMMIT")
        return rows

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure."""
        return min(self.max_backoff, RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))

    def deliver_due(self, *, limit: int = 100) -> int:
        """Run every due row once; returns how many were delivered. Never raises."""
        delivered = 0
        try:
            self.route_new()
            with self._conn() as db:
                rows = self._claim(db, time.time(), limit)
                for row in rows:
                    name, eid = row["hook"], row["event_id"]
                    try:
                        payload = json.loads(row["payload"])
                        _call(self._hook(name), payload, self.settings)
                    except Exception as err:  # a hook's failure stays with its row
                        attempts = row["attempts"] + 1
                        wait = self.backoff(attempts)
                        message = f"{type(err).__name__}: {err}"[:500]
                        db.execute(
                            "UPDATE hook_events SET attempts = ?, next_at = ?, last_error = ?"
                            " WHERE event_id = ? AND hook = ?",
                            (attempts, time.time() + wait, message, eid, name))
                        log.warning("hook %s failed for event %s (attempt %d, retry in %.0f s):"
                                    " %s", name, eid[:12], attempts, wait, message)
                    else:
                        db.execute(
                            "UPDATE hook_events SET state = 'done', attempts = attempts + 1,"
                            " done_at = ?, last_error = '' WHERE event_id = ? AND hook = ?",
                            (time.time(), eid, name))
                        delivered += 1
                        log.info("hook %s delivered event %s", name, eid[:12])
        except Exception:
            log.exception("hook queue %s: delivery round failed", self.path)
        return delivered

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Deliver due rows every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.deliver_due()
            stop.wait(interval)

    # status ----------------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        """Rows not yet delivered (for ``status``): see :func:`pending_rows`."""
        with self._conn() as db:
            return pending_rows(db)

    def delivered(self) -> list[dict[str, Any]]:
        """Delivered rows (event id, hook, attempts, times)."""
        with self._conn() as db:
            rows = db.execute(
                "SELECT event_id, hook, study_hash, attempts, created_at, done_at"
                " FROM hook_events WHERE state = 'done' ORDER BY done_at").fetchall()
        return [dict(r) for r in rows]


_QUEUES: dict[str, HookQueue] = {}
_QUEUES_LOCK = threading.Lock()


def _queue_for(settings: Any) -> HookQueue:
    key = str(Path(settings.data_dir))
    with _QUEUES_LOCK:
        queue = _QUEUES.get(key)
        if queue is None or queue.settings is not settings:
            queue = _QUEUES[key] = HookQueue(settings)
        return queue


def dispatch(result: StudyResult, settings: Any, *, patient: dict | None = None,
             route: bool = True) -> None:
    """Queue ``result`` for every active hook and return at once; never raises.

    ``route=False`` (a Celery worker): the event is held for the queue's owner, ``serve``,
    which gives it the hooks of its own settings; the worker's environment decides
    nothing (as with SR destinations)."""
    try:
        if not route:
            payload = build_payload(result, settings, patient=patient)
            new = _queue_for(settings).hold(payload)
            log.info("study %s: event %s held for the listener to route%s",
                     uid_hash(result.study_instance_uid), payload["event_id"][:12],
                     "" if new else " (held already)")
            return
        names = available_hooks(settings)
        if not names:
            return
        payload = build_payload(result, settings, patient=patient)
        added = _queue_for(settings).enqueue(payload, names)
        log.info("study %s: event %s queued for %d hook(s) (%d new)",
                 uid_hash(result.study_instance_uid), payload["event_id"][:12], len(names),
                 added)
    except Exception:
        log.exception("study %s: hooks could not be queued", uid_hash(result.study_instance_uid))


__all__ = ["ENTRY_POINT_GROUP", "UNROUTED", "HookQueue", "active_hooks", "available_hooks",
           "build_payload", "dispatch", "event_id", "pending_rows", "resolve_hook"]
