"""Tiny synthetic mammography data sets for the listener tests (headers real, pixels small)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_PRES = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROC = "1.2.840.10008.5.1.4.1.1.1.2.1"
TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

SCT_VIEW = {"CC": "399162004", "MLO": "399368009", "ML": "399260004", "XCCL": "399192008"}
SRT_VIEW = {"CC": "R-10242", "MLO": "R-10226", "ML": "R-10224", "XCCL": "R-1024A"}
SPOT_COMPRESSION = ("399055006", "SCT", "Spot Compression")


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def mg(study_uid: str, laterality: str | None, view: str | None, *,
       sop_class: str = MG_PRES, sop_uid: str | None = None, coding: str = "position",
       modifier: tuple[str, str, str] | None = None, acquired: str | None = None,
       instance_number: int | None = 1, rows: int = 160, cols: int = 128,
       patient_id: str = "PAT-SECRET-1") -> Dataset:
    """A small MG image. ``coding``: "position" (ViewPosition + SCT codes), "sct" (codes
    only), "srt" (legacy SRT codes only)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.PatientName = "Secret^Patient"
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if sop_class in (MG_PRES, MG_PROC):
        ds.PresentationIntentType = ("FOR PRESENTATION" if sop_class == MG_PRES
                                     else "FOR PROCESSING")
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        if coding == "position":
            ds.ViewPosition = view
        if coding in ("position", "sct"):
            item = code_item(SCT_VIEW[view], "SCT", view)
        else:
            item = code_item(SRT_VIEW[view], "SRT", view)
        if modifier:
            item.ViewModifierCodeSequence = Sequence([code_item(*modifier)])
        ds.ViewCodeSequence = Sequence([item])
    if acquired:
        ds.AcquisitionDateTime = acquired
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


MAGNIFICATION = ("399163009", "SCT", "Magnification")
IMPLANT_DISPLACED = ("399209000", "SCT", "Implant Displaced")


def gate_cases(study_uid: str = "1.2.3") -> dict[str, tuple[Dataset, str]]:
    """Images the screening-image gate keeps out, name -> (data set, reason code), and
    two it lets through (reason ``""``)."""
    cases: dict[str, tuple[Dataset, str]] = {}
    cases["screening"] = (mg(study_uid, "L", "CC"), "")
    ds = mg(study_uid, "R", "MLO")
    ds.BreastImplantPresent = "YES"
    cases["implants in place"] = (ds, "")
    ds = mg(study_uid, "L", "CC")
    ds.ViewPosition, ds.SeriesDescription = "FLATFIELD", "Flat Field Tomo"
    cases["flat field"] = (ds, "quality_control")
    ds = mg(study_uid, "R", "CC")
    ds.ProtocolName = "ACR PHANTOM"
    cases["phantom"] = (ds, "quality_control")
    ds = mg(study_uid, "L", "CC", rows=788, cols=1318)
    ds.ImageType = ["DERIVED", "PRIMARY", "STEREO", "LEFT"]
    ds.ImagerPixelSpacing = [0.085, 0.085]
    cases["stereotactic"] = (ds, "stereotactic")
    ds = mg(study_uid, "L", "CC")
    ds.ViewPosition = "SPECIMEN"
    cases["specimen"] = (ds, "specimen")
    cases["4 x 4 stub"] = (mg(study_uid, "L", "CC", rows=4, cols=4), "too_small")
    cases["1 x 2 stub"] = (mg(study_uid, "L", "CC", rows=1, cols=2), "too_small")
    ds = mg(study_uid, "R", "MLO", rows=600, cols=500)
    ds.ImagerPixelSpacing = [0.1, 0.1]  # 60 x 50 mm
    cases["small field"] = (ds, "too_small")
    cases["spot"] = (mg(study_uid, "R", "CC", modifier=SPOT_COMPRESSION), "spot_compression")
    cases["magnification"] = (mg(study_uid, "L", "MLO", modifier=MAGNIFICATION),
                              "magnification")
    cases["implant displaced"] = (mg(study_uid, "R", "CC", modifier=IMPLANT_DISPLACED),
                                  "implant_displaced")
    ds = mg(study_uid, "R", None)
    ds.ViewPosition = "MLOID"  # implant displaced, spelled as a position
    cases["implant displaced position"] = (ds, "implant_displaced")
    cases["XCCL"] = (mg(study_uid, "L", "XCCL"), "non_standard_view")
    cases["no laterality"] = (mg(study_uid, None, "CC"), "no_laterality")
    return cases


def study(study_uid: str | None = None, **kw) -> list[Dataset]:
    """A four-view screening study."""
    study_uid = study_uid or generate_uid()
    return [mg(study_uid, lat, view, instance_number=i + 1, **kw)
            for i, (lat, view) in enumerate((("R", "CC"), ("L", "CC"), ("R", "MLO"),
                                             ("L", "MLO")))]


def rdsr(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RDSR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = RDSR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    return ds


def write(ds: Dataset, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path
