"""RSNA Screening Mammography Breast Cancer Detection (2022): ``train.csv``.

Only some sites' rows have a ``density`` (A-D); unlabelled rows are skipped. Layout:
``ROOT/train.csv`` and ``ROOT/train_images/<patient_id>/<image_id>.dcm``. One exam per
patient in this dataset; ``site_id`` and ``machine_id`` are kept as extra columns.
"""

from __future__ import annotations

from pathlib import Path

from mammo_density.train.adapters.common import column, density, finish, laterality, read_csv
from mammo_density.train.data import ImageRecord

NAME = "rsna"


def convert(root: Path, out_csv: Path) -> list[ImageRecord]:
    root = Path(root)
    records = []
    for row in read_csv(root / "train.csv"):
        pid, image = column(row, "patient_id"), column(row, "image_id")
        records.append(ImageRecord(
            exam_id=pid, patient_id=pid, laterality=laterality(column(row, "laterality")),
            view=column(row, "view").upper(),
            path=root / "train_images" / pid / f"{image}.dcm",
            density=density(row.get("density", "")),
            fields={"site_id": row.get("site_id", ""), "machine_id": row.get("machine_id", "")}))
    return finish(records, out_csv, name=NAME, extra_columns=("site_id", "machine_id"))
