"""Built-in hook ``registry``: one row per exam with density, dose and model version.

On by default (``settings.registry_enabled``). The database is SQLite at
``data_dir/registry.sqlite3`` unless ``settings.registry_url`` names another one:
``sqlite:///absolute/path.sqlite3`` or ``postgresql://user:pass@host/db`` (needs the
``psycopg`` package: ``pip install 'mammo-density[postgresql]'``; the tests run the same
checks on both databases). Rows are upserted per study: the newest revision wins, an older
revision arriving late never overwrites a newer one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

COLUMNS: tuple[str, ...] = (
    "study_uid", "revision", "exam_date", "category_r", "category_l", "category_exam",
    "dense", "p_dense", "agd_r_mgy", "agd_l_mgy", "agd_total_mgy", "agd_source",
    "thickness_r_mm", "thickness_l_mm", "mean_thickness_mm", "mean_force_n", "kvp",
    "exposures", "model_name", "model_version", "model_sha256", "recommendations",
    "event_id", "updated_at",
)

_TYPES = {"revision": "INTEGER", "dense": "INTEGER", "exposures": "INTEGER"}
_REALS = {"p_dense", "agd_r_mgy", "agd_l_mgy", "agd_total_mgy", "thickness_r_mm",
          "thickness_l_mm", "mean_thickness_mm", "mean_force_n", "kvp", "updated_at"}


def _ddl() -> str:
    cols = []
    for c in COLUMNS:
        kind = _TYPES.get(c) or ("DOUBLE PRECISION" if c in _REALS else "TEXT")
        cols.append(f"{c} {kind}" + (" PRIMARY KEY" if c == "study_uid" else ""))
    return "CREATE TABLE IF NOT EXISTS exams (" + ", ".join(cols) + ")"


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


def row_from_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The registry row of one hook payload (a StudyResult JSON plus event fields)."""
    exam = payload.get("exam") or {}
    breasts = payload.get("breasts") or {}
    dose = payload.get("dose") or {}
    dose_breasts = dose.get("breasts") or {}
    model = payload.get("model") or {}
    views = dose.get("views") or []
    sources = sorted({b.get("agd_source") for b in dose_breasts.values()} - {None, "none"})
    recs = payload.get("recommendations") or []
    return {
        "study_uid": payload["study_instance_uid"],
        "revision": int(payload.get("revision", 1)),
        "exam_date": payload.get("study_date") or "",
        "category_r": (breasts.get("R") or {}).get("category"),
        "category_l": (breasts.get("L") or {}).get("category"),
        "category_exam": exam.get("category"),
        "dense": None if not exam else int(bool(exam.get("dense"))),
        "p_dense": exam.get("p_dense"),
        "agd_r_mgy": (dose_breasts.get("R") or {}).get("agd_mgy"),
        "agd_l_mgy": (dose_breasts.get("L") or {}).get("agd_mgy"),
        "agd_total_mgy": dose.get("total_agd_mgy"),
        "agd_source": ",".join(sources),
        "thickness_r_mm": (dose_breasts.get("R") or {}).get("mean_thickness_mm"),
        "thickness_l_mm": (dose_breasts.get("L") or {}).get("mean_thickness_mm"),
        "mean_thickness_mm": _mean([v.get("thickness_mm") for v in views]),
        "mean_force_n": _mean([v.get("force_n") for v in views]),
        "kvp": _mean([v.get("kvp") for v in views]),
        "exposures": sum(int(b.get("exposures") or 0) for b in dose_breasts.values()),
        "model_name": model.get("name"),
        "model_version": model.get("version"),
        "model_sha256": model.get("sha256"),
        "recommendations": json.dumps([f"{r.get('rule')}: {r.get('text')}" for r in recs],
                                      ensure_ascii=False),
        "event_id": payload.get("event_id", ""),
        "updated_at": time.time(),
    }


class Registry:
    """The exam registry (SQLite or PostgreSQL)."""

    def __init__(self, settings: Any) -> None:
        url = str(getattr(settings, "registry_url", "") or "")
        self.kind = "sqlite"
        self.path: Path | None = None
        self.url = url
        self._local = threading.local()
        if not url:
            self.path = Path(settings.data_dir) / "registry.sqlite3"
        elif url.startswith("sqlite:///"):
            self.path = Path(url[len("sqlite:///"):])  # sqlite:////abs or sqlite:///rel
        elif urlsplit(url).scheme in ("postgres", "postgresql"):
            self.kind = "postgresql"
        else:
            raise ValueError("registry_url must be sqlite:///PATH or postgresql://...")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            self._execute(db, _ddl())

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.kind == "sqlite":
            db = getattr(self._local, "db", None)
            if db is None:  # one connection per thread, kept open
                db = self._local.db = sqlite3.connect(self.path, timeout=30.0)
                db.execute("PRAGMA journal_mode=WAL")
            with db:  # one transaction
                yield db
        else:
            try:
                import psycopg
            except ImportError as err:
                raise RuntimeError("registry_url is PostgreSQL: install psycopg") from err
            with psycopg.connect(self.url) as db:
                yield db

    def _execute(self, db: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.kind == "postgresql":
            sql = sql.replace("?", "%s")
        return db.execute(sql, params)

    def upsert(self, row: dict[str, Any]) -> None:
        """Insert or replace the study's row unless the stored revision is newer."""
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "study_uid")
        sql = (f"INSERT INTO exams ({cols}) VALUES ({marks}) ON CONFLICT (study_uid) DO UPDATE"
               f" SET {updates} WHERE excluded.revision >= exams.revision")
        with self._connect() as db:
            self._execute(db, sql, [row.get(c) for c in COLUMNS])

    def rows(self) -> list[dict[str, Any]]:
        """Every exam, oldest exam date first."""
        with self._connect() as db:
            cur = self._execute(db, f"SELECT {', '.join(COLUMNS)} FROM exams"
                                    " ORDER BY exam_date, study_uid")
            return [dict(zip(COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def write_csv(self, out: IO[str]) -> int:
        """All rows as CSV (header line first); returns the number of rows."""
        rows = self.rows()
        writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return len(rows)


_OPEN: dict[tuple[str, str], Registry] = {}
_OPEN_LOCK = threading.Lock()


def registry_for(settings: Any) -> Registry:
    """One :class:`Registry` per database per process (the table is created once)."""
    key = (str(getattr(settings, "registry_url", "") or ""), str(settings.data_dir))
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = Registry(settings)
        return _OPEN[key]


def registry_hook(payload: dict[str, Any], *, settings: Any) -> None:
    """Hook entry point: record the exam."""
    registry_for(settings).upsert(row_from_payload(payload))


__all__ = ["COLUMNS", "Registry", "registry_for", "registry_hook", "row_from_payload"]
