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
    import cv2
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = cv2.imread(str(pgm), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise AdapterError(f"{pgm}: unreadable image")
    img = np.ascontiguousarray(img.astype(np.uint8))
    from mammo_density.study.sop import MG_FOR_PRESENTATION

    sop_class = MG_FOR_PRESENTATION
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["mias", pgm.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["mias-study", patient])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["mias-series", pgm.name])
    ds.Modality, ds.PatientID, ds.PatientName = "MG", patient, ""
    ds.ImageLaterality, ds.Laterality, ds.ViewPosition = laterality, laterality, "MLO"
    ds.PatientOrientation = ["A" if laterality == "L" else "P", "F"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelData = img.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


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
