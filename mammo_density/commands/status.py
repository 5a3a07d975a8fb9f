"""``mammo-density status``: studies by state, oldest in flight, last errors, undelivered SRs."""

from __future__ import annotations

import argparse
import json
import logging
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
    exam = result.get("exam") or {}
    return {
        "category": exam.get("category") or exam.get("birads") or exam.get("density_class"),
        "dense": exam.get("dense"),
        "partial": result.get("partial"),
        "unused_images": [
            {k: u.get(k) for k in ("image", "slot", "reason", "text")}
            for u in result.get("unused_images") or [] if isinstance(u, dict)],
    }


def _pending(settings: Settings, module: str, cls: str) -> list[dict[str, Any]] | None:
    """``pending()`` of the SR outbox / hook queue, or None where that part is absent."""
    try:
        mod = __import__(module, fromlist=[cls])
        queue = getattr(mod, cls)(settings)
    except ImportError:
        return None
    try:
        return list(queue.pending())
    except Exception as err:  # a status command reports, it does not crash
        return [{"error": f"{type(err).__name__}: {err}"}]


def collect(settings: Settings, errors: int = 10) -> dict[str, Any]:
    """Everything ``status`` prints, as plain data."""
    from mammo_density.plugin.state import STATUSES, StateDB

    if not settings.state_db.exists():
        return {"data_dir": str(settings.data_dir), "state": "no state database yet",
                "counts": dict.fromkeys(STATUSES, 0), "studies": {}, "oldest_in_flight": None,
                "last_errors": [], "undelivered_srs": None, "pending_hooks": None}
    db = StateDB(settings.state_db)
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
            "counts": db.counts(),
            "studies": studies,
            "oldest_in_flight": None if oldest is None else {
                "study_uid": oldest["study_uid"], "status": oldest["status"],
                "age_s": round(time.time() - oldest["created_at"], 1)},
            "last_errors": db.last_errors(errors),
            "undelivered_srs": _pending(settings, "mammo_density.plugin.outbox", "Outbox"),
            "pending_hooks": _pending(settings, "mammo_density.worker.hooks", "HookQueue"),
        }
    finally:
        db.close()
    return out


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run(args: argparse.Namespace, settings: Settings) -> int:
    data = collect(settings, args.errors)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"data dir: {data['data_dir']}")
    print("studies: " + ", ".join(f"{k} {v}" for k, v in data["counts"].items()))
    for status, rows in data["studies"].items():
        for row in rows:
            line = f"  {status:<10} {row['study_uid']}  rev {row['revision']}"
            if row["result"]:
                r = row["result"]
                line += f"  category {r['category']} dense {r['dense']}"
                line += " partial" if r["partial"] else ""
            elif row["partial"] and status in ("queued", "processing"):
                line += "  partial (missing " + ",".join(row["missing_views"]) + ")"
            if status == "failed" and row["last_error"]:
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
    return 0
