"""INbreast: ``INbreast.csv`` (semicolon-separated, density in ``ACR`` 1-4).

The CSV's patient column is anonymised away; the DICOM file names in ``AllDICOMs/`` carry a
per-patient hash (``<file name>_<hash>_MG_<R|L>_<CC|ML>_ANON.dcm``), used as exam and patient
id. The dataset's MLO views are written ``MLO`` in the CSV and ``ML`` in file names.
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

NAME = "inbreast"


def convert(root: Path, out_csv: Path) -> list[ImageRecord]:
    root = Path(root)
    csv_path = root / "INbreast.csv"
    dicoms = {p.name.split("_")[0]: p for p in (root / "AllDICOMs").glob("*.dcm")}
    if not dicoms:
        raise AdapterError(f"{root / 'AllDICOMs'}: no .dcm files")
    records = []
    for row in read_csv(csv_path, delimiter=";"):
        name = column(row, "File Name").split(".")[0]
        path = dicoms.get(name)
        if path is None:
            continue
        parts = path.name.split("_")
        patient = parts[1] if len(parts) > 1 else name
        v = column(row, "View").upper()
        records.append(ImageRecord(
            exam_id=patient, patient_id=patient, laterality=laterality(column(row, "Laterality")),
            view="MLO" if v in ("MLO", "ML") else v, path=path,
            density=density(column(row, "ACR"))))
    return finish(records, out_csv, name=NAME)
