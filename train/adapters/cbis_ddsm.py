"""CBIS-DDSM: mass and calcification description CSVs (train and test sets).

The mass CSVs spell the column ``breast_density``, the calcification CSVs ``breast density``
(values 1-4 = A-D). One row per abnormality: an image with several abnormalities appears
several times and is kept once. ``image file path`` is relative to ``ROOT``. Exams are
(patient, set) pairs; the dataset's train/test sets are kept as splits, except that a
patient found in both test and train is kept in test only (no woman in two splits).
"""

from __future__ import annotations

from pathlib import Path

from mammo_density.train.adapters.common import (
    AdapterError,
    column,
    density,
    finish,
    laterality,
    read_csv,
)
from mammo_density.train.data import ImageRecord

NAME = "cbis-ddsm"
CSV_GLOB = "*case_description*set*.csv"


def convert(root: Path, out_csv: Path) -> list[ImageRecord]:
    root = Path(root)
    files = sorted(root.glob(CSV_GLOB))
    if not files:
        raise AdapterError(f"{root}: no {CSV_GLOB} files")
    seen: dict[str, ImageRecord] = {}
    for f in files:
        split = "test" if "test" in f.name.lower() else "train"
        for row in read_csv(f):
            rel = column(row, "image file path").replace("\\", "/")
            if rel in seen:
                continue
            pid = column(row, "patient_id")
            seen[rel] = ImageRecord(
                exam_id=f"{pid}-{split}", patient_id=pid,
                laterality=laterality(column(row, "left or right breast")),
                view=column(row, "image view").upper(), path=root / rel,
                density=density(column(row, "breast_density", "breast density")), split=split)
    test_patients = {r.patient_id for r in seen.values() if r.split == "test"}
    records = [r for r in seen.values() if r.split == "test" or r.patient_id not in test_patients]
    return finish(records, out_csv, name=NAME)
