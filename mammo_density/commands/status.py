"""``mammo-density status``: studies by state, oldest in flight, last errors, undelivered SRs.

It only reads: every database is opened read-only (:func:`~mammo_density.datadir.
connect_readonly`), nothing is created, so it works on a full or read-only disk and never
turns a mistyped ``--data-dir`` into an empty node. A data directory without a state
database is an error (exit 1), as is a database that cannot be read. ``status | head``
ends quietly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from mammo_density.config import Settings

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what the node has received, assessed and delivered")
    p.add_argument("--data-dir", help="state, spool and outbox folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--errors", type=int, default=10, metavar="N", help="last N errors")
    p.set_defaults(func=run)


def _summary(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few result fields worth a line: exam category, dense, partial, and the images
    not used with their reasons."""
    if not result:
        return None
    if result.get("conflicting"):  # held, not assessed (mammo_density.study.identity)
        return {"category": None, "dense": None, "partial": None, "conflicting": True,
                "reason": result.get("reason")}
    exam = result.get("exam") or {}
    return {
        "category": exam.get("category") or exam.get("birads") or exam.get("density_class"),
        "dense": exam.get("dense"),
        "partial": result.get("partial"),
        "unused_images": [
            {k: u.get(k) for k in ("image", "slot", "reason", "text")}
            for u in result.get("unused_images") or [] if isinstance(u, dict)],
    }


class NoStateDatabase(Exception):
    """The data directory has no (readable) state database."""


def _undelivered_srs(settings: Settings) -> list[dict[str, Any]] | None:
    """Undelivered SRs from the outbox database, read-only; None where there is none yet."""
    try:
        from mammo_density.plugin.outbox import Outbox
    except ImportError:
        return None
    try:
        return list(Outbox(settings, readonly=True).pending())
    except FileNotFoundError:
        return None
    except Exception as err:  # a status command reports, it does not crash
        return [{"error": f"{type(err).__name__}: {err}"}]


def _pending_hooks(settings: Settings) -> list[dict[str, Any]] | None:
    """Hook events not yet delivered (the hook queue's ``pending()`` query, read-only)."""
    from mammo_density.datadir import connect_readonly
    from mammo_density.worker.hooks import pending_rows

    path = settings.data_dir / "hooks.sqlite3"
    if not path.exists():
        return None
    try:
        db = connect_readonly(path)
        try:
            return pending_rows(db)
        finally:
            db.close()
    except Exception as err:
        return [{"error": f"{type(err).__name__}: {err}"}]


def _warnings(settings: Settings) -> list[str]:
    out = []
    if not settings.sr_destinations:
        out.append(f"no SR destination configured (sr_destinations): SRs are kept in "
                   f"{settings.outbox_dir} and sent nowhere")
    return out


def collect(settings: Settings, errors: int = 10) -> dict[str, Any]:
    """Everything ``status`` prints, as plain data.

    Raises
    ------
    NoStateDatabase
        The data directory has no state database, or it cannot be read.
    """
    import sqlite3

    from mammo_density.plugin.state import STATUSES, StateDB

    if not settings.state_db.is_file():
        where = ("does not exist" if not settings.data_dir.exists()
                 else "has no state database (state.sqlite3)")
        raise NoStateDatabase(
            f"data directory {settings.data_dir} {where}: not a node's data directory, or "
            "`serve` never ran there (check --data-dir / MAMMO_DENSITY_DATA_DIR)")
    try:
        db = StateDB(settings.state_db, readonly=True)
    except sqlite3.Error as err:
        raise NoStateDatabase(f"cannot read {settings.state_db}: {err}") from None
    try:
        studies: dict[str, list[dict[str, Any]]] = {s: [] for s in STATUSES}
        for row in db.studies():
            studies.setdefault(row["status"], []).append({
                "study_uid": row["study_uid"], "revision": row["revision"],
                "updated_at": row["updated_at"], "partial": row["partial"],
                "missing_views": row["missing_views"], "last_error": row["last_error"],
                "result": _summary(row["result"]),
            })
        oldest = db.oldest_in_flight()
        out = {
            "data_dir": str(settings.data_dir),
            "warnings": _warnings(settings),
            "sr_destinations": [str(d) for d in settings.sr_destinations],
            "counts": db.counts(),
            "studies": studies,
            "oldest_in_flight": None if oldest is None else {
                "study_uid": oldest["study_uid"], "status": oldest["status"],
                "age_s": round(time.time() - oldest["created_at"], 1)},
            "last_errors": db.last_errors(errors),
            "undelivered_srs": _undelivered_srs(settings),
            "pending_hooks": _pending_hooks(settings),
        }
    except sqlite3.Error as err:
        raise NoStateDatabase(f"cannot read {settings.state_db}: {err}") from None
    finally:
        db.close()
    return out


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = collect(settings, args.errors)
    except NoStateDatabase as err:
        print(f"mammo-density status: {err}", file=sys.stderr)
        return 1
    try:
        _print(data, as_json=args.json)
        sys.stdout.flush()
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0


def _print(data: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for warning in data["warnings"]:
        print(f"WARNING: {warning}")
    print(f"data dir: {data['data_dir']}")
    print("studies: " + ", ".join(f"{k} {v}" for k, v in data["counts"].items()))
    for status, rows in data["studies"].items():
        for row in rows:
            line = f"  {status:<10} {row['study_uid']}  rev {row['revision']}"
            if row["result"] and not row["result"].get("conflicting"):
                r = row["result"]
                line += f"  category {r['category']} dense {r['dense']}"
                line += " partial" if r["partial"] else ""
            elif row["partial"] and status in ("queued", "processing"):
                line += "  partial (missing " + ",".join(row["missing_views"]) + ")"
            if status in ("failed", "conflicting") and row["last_error"]:
                line += f"  {row['last_error'][:100]}"
            print(line)
            if status == "failed" and len(row["last_error"] or "") > 100:
                print(f"             {row['last_error'][:1000]}")
            for u in (row["result"] or {}).get("unused_images") or []:
                print(f"             not used: image {u['image']} {u['slot'] or '-'} "
                      f"{u['reason']}: {u['text']}")
    oldest = data["oldest_in_flight"]
    if oldest:
        print(f"oldest in flight: {oldest['study_uid']} ({oldest['status']}, "
              f"{oldest['age_s']:.0f} s)")
    if data["last_errors"]:
        print("last errors:")
        for err in data["last_errors"]:
            print(f"  {_when(err['at'])} {err['study_uid'] or '-'} rev {err['revision']}: "
                  f"{err['reason'][:160]}")
    for key, title in (("undelivered_srs", "undelivered SRs"), ("pending_hooks",
                                                                  "pending hooks")):
        rows = data.get(key)
        if rows is None:
            continue
        print(f"{title}: {len(rows)}")
        for row in rows[:20]:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items())[:200])
