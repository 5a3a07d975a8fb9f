"""What every dataset adapter shares: path resolution, laterality/view spellings, output."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path

from mammo_density.study.slots import SCREENING_VIEWS
from mammo_density.train.data import ImageRecord, normalise_density, write_manifest_csv

log = logging.getLogger(__name__)


class AdapterError(ValueError):
    """The dataset's files are not in the expected layout (the message says which)."""


def read_csv(path: Path, *, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a CSV with header names stripped of surrounding spaces."""
    if not Path(path).exists():
        raise AdapterError(f"{path} not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        rows = []
        for row in reader:
            rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
    return rows


def column(row: dict[str, str], *names: str) -> str:
    """The first of ``names`` present in ``row`` (datasets spell columns differently)."""
    for n in names:
        if n in row:
            return row[n]
    raise AdapterError(f"none of the columns {names} in the file (has {sorted(row)})")


def laterality(value: str) -> str:
    v = value.strip().upper()
    if v in ("R", "RIGHT"):
        return "R"
    if v in ("L", "LEFT"):
        return "L"
    raise ValueError(f"laterality {value!r}")


def density(value: str) -> str | None:
    try:
        return normalise_density(value)
    except ValueError:
        return None


def gate_records(records: Iterable[ImageRecord], *, digitised_film: bool = False,
                 ) -> tuple[list[ImageRecord], dict[str, int]]:
    """The records whose DICOM file passes the screening-image gate
    (:func:`mammo_density.study.gate.screen_file`: no QA, stereotactic, specimen, stub,
    spot or magnification images), and how many were dropped per reason code. Files that
    are not DICOM (``.dcm`` / ``.dicom``) are kept as they are."""
    from mammo_density.study.gate import screen_file

    kept: list[ImageRecord] = []
    dropped: dict[str, int] = {}
    for r in records:
        if Path(r.path).suffix.lower() not in (".dcm", ".dicom"):
            kept.append(r)
            continue
        verdict = screen_file(r.path, digitised_film=digitised_film)
        if verdict.slot is None:
            code = verdict.reason.value if verdict.reason else "not_an_image"
            dropped[code] = dropped.get(code, 0) + 1
        else:
            kept.append(r)
    if dropped:
        log.info("screening-image gate dropped %s", ", ".join(
            f"{n} {code}" for code, n in sorted(dropped.items())))
    return kept, dropped


def finish(records: Iterable[ImageRecord], out_csv: Path, *, name: str,
           extra_columns: tuple[str, ...] = ()) -> list[ImageRecord]:
    """Keep labelled screening images (CC/MLO), write the manifest, log a summary."""
    kept, skipped = [], 0
    for r in records:
        if r.density is None or r.view not in SCREENING_VIEWS:
            skipped += 1
            continue
        kept.append(r)
    if not kept:
        raise AdapterError(f"{name}: no labelled CC/MLO images found")
    write_manifest_csv(out_csv, kept, extra_columns=extra_columns)
    log.info("%s: %d images of %d exams written to %s (%d rows skipped: unlabelled or "
             "not CC/MLO)", name, len(kept), len({r.exam_id for r in kept}), out_csv, skipped)
    return kept
