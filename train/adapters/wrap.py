"""Wrap a plain 8/16-bit greyscale image (PGM, PNG) into a For Presentation DICOM file.

The shared preprocessing (:mod:`mammo_density.worker.preprocess`) reads DICOM only; datasets
published as plain images are wrapped once, so that training and inference see exactly the
same preprocessing. The wrapper writes laterality, view, the display orientation of the
dataset (chest wall on the right for right breasts, on the left for left breasts, the usual
mammography hanging convention) and the pixel spacing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo_density.study.sop import MG_FOR_PRESENTATION as DX_MAMMO_PRESENTATION
from mammo_density.train.adapters.common import AdapterError


def read_grey(path: Path) -> np.ndarray:
    """A greyscale image as uint8 or uint16 (colour images are converted to grey)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise AdapterError(f"{path}: unreadable image")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if img.dtype not in (np.uint8, np.uint16):
        raise AdapterError(f"{path}: {img.dtype} pixels; expected 8 or 16 bit")
    return np.ascontiguousarray(img)


def image_to_dicom(img: np.ndarray, out: Path, *, laterality: str, view: str, patient: str,
                   study: str, key: str, spacing_mm: float, source: str) -> Path:
    """Write ``img`` (uint8/uint16, rows x columns) as an MG For Presentation DICOM file.

    ``source`` names the dataset (in the UIDs' entropy, so re-running gives the same UIDs);
    ``study`` groups images of one exam; ``key`` identifies the image within the dataset.
    """
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if laterality not in ("R", "L"):
        raise ValueError(f"laterality {laterality!r} is not R or L")
    bits = 16 if img.dtype == np.uint16 else 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_MAMMO_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[source, key])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_MAMMO_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"{source}-study", study])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"{source}-series", key])
    ds.Modality, ds.PatientID, ds.PatientName = "MG", patient, ""
    ds.ImageLaterality, ds.Laterality, ds.ViewPosition = laterality, laterality, view
    # Row direction towards the nipple: anterior for a left breast shown chest wall left.
    ds.PatientOrientation = ["A" if laterality == "L" else "P", "F"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelSpacing = ds.ImagerPixelSpacing = [round(spacing_mm, 6), round(spacing_mm, 6)]
    ds.PixelData = img.tobytes()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
