"""mini-MIAS: ``Info.txt`` and ``mdbNNN.pgm`` images (MLO views only, three tissue classes).

Tissue classes: F (fatty), G (fatty-glandular), D (dense-glandular). They are not BI-RADS;
this adapter maps F -> A, G -> B, D -> C (``MIAS_TO_BIRADS``) and keeps the original class in
the ``mias_tissue`` column: train such a manifest with ``--task dense2`` (F, G non-dense;
D dense), the only task the labels support. Images come in pairs of one woman (mdb001 and
mdb002, ...): odd numbers are taken as the right breast, even as the left.

The shared preprocessing reads DICOM only, so each PGM is wrapped once into a DICOM file
(``images_dir``) with its laterality, view and pixel spacing (200 um): training and
inference then see exactly the same preprocessing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mammo_density.train.adapters.common import AdapterError, finish
from mammo_density.train.adapters.wrap import image_to_dicom, read_grey
from mammo_density.train.data import ImageRecord

NAME = "mias"
MIAS_TO_BIRADS = {"F": "A", "G": "B", "D": "C"}
PIXEL_SPACING_MM = 0.2
_LINE = re.compile(r"^(mdb\d{3})\s+([FGD])\b", re.IGNORECASE)


def parse_info(path: Path) -> dict[str, str]:
    """Image reference -> tissue class (first line of each image; one line per finding)."""
    out: dict[str, str] = {}
    if not Path(path).exists():
        raise AdapterError(f"{path} not found")
    for line in Path(path).read_text(errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if m:
            out.setdefault(m.group(1).lower(), m.group(2).upper())
    if not out:
        raise AdapterError(f"{path}: no 'mdbNNN F|G|D ...' lines")
    return out


def pgm_to_dicom(pgm: Path, out: Path, *, laterality: str, patient: str) -> Path:
    """Wrap a PGM as a For Presentation digital mammogram (MONOCHROME2, 8 bit)."""
    img = read_grey(pgm).astype(np.uint8)
    return image_to_dicom(img, out, laterality=laterality, view="MLO", patient=patient,
                          study=patient, key=pgm.name, spacing_mm=PIXEL_SPACING_MM,
                          source="mias")


def convert(root: Path, out_csv: Path, *, images_dir: Path | None = None) -> list[ImageRecord]:
    root = Path(root)
    info = parse_info(root / "Info.txt")
    images_dir = Path(images_dir) if images_dir else Path(out_csv).parent / "mias-dicom"
    records = []
    for ref, tissue in sorted(info.items()):
        pgm = root / f"{ref}.pgm"
        if not pgm.exists():
            continue
        num = int(ref[3:])
        lat = "R" if num % 2 == 1 else "L"
        patient = f"mias{(num + 1) // 2:03d}"
        dcm = images_dir / f"{ref}.dcm"
        if not dcm.exists():
            pgm_to_dicom(pgm, dcm, laterality=lat, patient=patient)
        records.append(ImageRecord(exam_id=patient, patient_id=patient, laterality=lat,
                                   view="MLO", path=dcm, density=MIAS_TO_BIRADS[tissue],
                                   fields={"mias_tissue": tissue}))
    return finish(records, out_csv, name=NAME, extra_columns=("mias_tissue",))
