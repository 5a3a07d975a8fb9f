"""VinDr-Mammo: ``breast-level_annotations.csv`` (``breast_density`` = "DENSITY A".."D").

Layout: ``ROOT/breast-level_annotations.csv`` and ``ROOT/images/<study_id>/<image_id>.dicom``.
One study per woman, so the study id is the patient id. The dataset's own split
(``training`` / ``test``) is kept as train / test.
"""

from __future__ import annotations

from pathlib import Path

from mammo_density.train.adapters.common import column, density, finish, laterality, read_csv
from mammo_density.train.data import ImageRecord

NAME = "vindr"


def convert(root: Path, out_csv: Path) -> list[ImageRecord]:
    root = Path(root)
    rows = read_csv(root / "breast-level_annotations.csv")
    records = []
    for row in rows:
        study, image = column(row, "study_id"), column(row, "image_id")
        split = column(row, "split").lower()
        records.append(ImageRecord(
            exam_id=study, patient_id=study, laterality=laterality(column(row, "laterality")),
            view=column(row, "view_position").upper(),
            path=root / "images" / study / f"{image}.dicom",
            density=density(column(row, "breast_density")),
            split={"training": "train", "test": "test"}.get(split, "")))
    return finish(records, out_csv, name=NAME)
