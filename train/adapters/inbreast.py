"""INbreast: ``INbreast.csv`` (semicolon-separated, density in ``ACR`` 1-4) and its images.

Two layouts are accepted under ``ROOT``:

- the original release: DICOM files in ``ROOT/AllDICOMs/``;
- a PNG copy (8-bit, about half the original resolution): ``*.png`` files anywhere under
  ``ROOT`` (e.g. ``ROOT/public/images/inbreast/``). Each PNG is wrapped once into a For
  Presentation DICOM file under ``images_dir`` (default: ``inbreast-dicom/`` beside the
  manifest), as the mini-MIAS adapter does, so that training and inference see one
  preprocessing.

File names are ``<file name>_<patient hash>_MG_<R|L>_<CC|ML>_ANON.<ext>``: the CSV's
``File Name`` is the leading number and its patient column is anonymised away, so the hash
in the file name is the patient id (cross-validation folds are by woman). An exam is one
woman's images of one ``Acquisition date``. The dataset's MLO views are written ``MLO`` in
the CSV and ``ML`` in file names.
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
#: Detector pixel pitch of the original images (mm) and their row counts by column count
#: (the two detector formats), to state the PNG copies' spacing.
ORIGINAL_SPACING_MM = 0.07
_ORIGINAL_ROWS_BY_ASPECT = {4084 / 3328: 4084, 3328 / 2560: 3328}


def png_spacing_mm(rows: int, cols: int, original_rows: int | None = None) -> float:
    """Pixel spacing of a downscaled copy: 70 um times the original / copy row ratio."""
    if original_rows is None:
        aspect = rows / cols
        original_rows = min(_ORIGINAL_ROWS_BY_ASPECT.items(),
                            key=lambda kv: abs(kv[0] - aspect))[1]
    return ORIGINAL_SPACING_MM * original_rows / rows


def _find_images(root: Path) -> tuple[dict[str, Path], bool]:
    """File-name id -> image path; True when the images are PNG copies."""
    dicoms = {p.name.split("_")[0]: p for p in (root / "AllDICOMs").glob("*.dcm")}
    if dicoms:
        return dicoms, False
    pngs = {p.name.split("_")[0]: p for p in sorted(root.rglob("*_MG_*.png"))}
    if pngs:
        return pngs, True
    raise AdapterError(f"{root}: no AllDICOMs/*.dcm and no *_MG_*.png images")


def _wrap(png: Path, images_dir: Path, *, lat: str, view: str, patient: str,
          exam: str) -> Path:
    from mammo_density.train.adapters.wrap import image_to_dicom, read_grey

    dcm = images_dir / f"{png.stem}.dcm"
    if dcm.exists() and dcm.stat().st_mtime >= png.stat().st_mtime:
        return dcm
    img = read_grey(png)
    return image_to_dicom(img, dcm, laterality=lat, view=view, patient=patient, study=exam,
                          key=png.name, spacing_mm=png_spacing_mm(*img.shape),
                          source="inbreast")


def convert(root: Path, out_csv: Path, *, images_dir: Path | None = None) -> list[ImageRecord]:
    root = Path(root)
    csv_path = root / "INbreast.csv"
    images, wrap = _find_images(root)
    images_dir = Path(images_dir) if images_dir else Path(out_csv).parent / "inbreast-dicom"
    records = []
    for row in read_csv(csv_path, delimiter=";"):
        name = column(row, "File Name").split(".")[0]
        path = images.get(name)
        label = density(column(row, "ACR"))
        if path is None or label is None:
            continue
        parts = path.name.split("_")
        patient = parts[1] if len(parts) > 1 else name
        date = row.get("Acquisition date", "").strip()
        exam = f"{patient}-{date}" if date else patient
        v = column(row, "View").upper()
        view = "MLO" if v in ("MLO", "ML") else v
        lat = laterality(column(row, "Laterality"))
        if wrap:
            path = _wrap(path, images_dir, lat=lat, view=view, patient=patient, exam=exam)
        records.append(ImageRecord(exam_id=exam, patient_id=patient, laterality=lat,
                                   view=view, path=path, density=label))
    return finish(records, out_csv, name=NAME)
