"""EMBED (Emory Breast Imaging Dataset): clinical + metadata CSVs.

Density is the clinical table's ``tissueden`` (1-4 = A-D; 5 = male, excluded), given per
exam (``acc_anon``) and ``side`` (L, R, or B for both). Images come from the metadata table
(``anon_dicom_path``, ``ImageLateralityFinal``, ``ViewPosition``), joined by accession and
side. 2D images only (``FinalImageType`` == "2D" when present; C-views and spot/magnified
views dropped). ``anon_dicom_path`` is absolute on EMBED's servers: ``path_prefix`` (old)
is replaced by ``ROOT``.
"""

from __future__ import annotations

from pathlib import Path

from mammo_density.train.adapters.common import column, density, finish, laterality, read_csv
from mammo_density.train.data import ImageRecord

NAME = "embed"
CLINICAL = "EMBED_OpenData_clinical.csv"
METADATA = "EMBED_OpenData_metadata.csv"


def _tissueden(value: str) -> str | None:
    v = value.strip()
    if v.endswith(".0"):
        v = v[:-2]
    if v == "5":  # male
        return None
    return density(v)


def convert(root: Path, out_csv: Path, *, path_prefix: str = "") -> list[ImageRecord]:
    root = Path(root)
    dens: dict[tuple[str, str], str] = {}
    for row in read_csv(root / CLINICAL):
        d = _tissueden(column(row, "tissueden"))
        if d is None:
            continue
        acc, side = column(row, "acc_anon"), column(row, "side").upper()
        for s in (("R", "L") if side == "B" else (side,)):
            if s in ("R", "L"):
                dens.setdefault((acc, s), d)
    records = []
    for row in read_csv(root / METADATA):
        if row.get("FinalImageType", "2D") not in ("2D", ""):
            continue
        if row.get("spot_mag", "").strip() not in ("", "0", "0.0", "nan"):
            continue
        acc = column(row, "acc_anon")
        try:
            lat = laterality(column(row, "ImageLateralityFinal", "ImageLaterality"))
        except ValueError:
            continue
        raw = column(row, "anon_dicom_path")
        if path_prefix and raw.startswith(path_prefix):
            raw = raw[len(path_prefix):]
        path = Path(raw)
        path = root / raw.lstrip("/") if path.is_absolute() and not path.exists() else (
            path if path.is_absolute() else root / path)
        records.append(ImageRecord(
            exam_id=acc, patient_id=column(row, "empi_anon"), laterality=lat,
            view=column(row, "ViewPosition").upper(), path=path, density=dens.get((acc, lat))))
    return finish(records, out_csv, name=NAME)
