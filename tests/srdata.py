"""Small inputs for the SR and outbox tests: four tiny MG images, a result, a manifest.

The images are real DICOM files (8x8 pixels, Explicit VR Little Endian) so they can be
C-STOREd into Orthanc before the SR; the result and manifest are built by hand, as the
pipeline would build them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammo_density.manifest import ModelManifest
from mammo_density.result import (
    BreastDose,
    BreastResult,
    DoseSummary,
    ExamResult,
    ModelRef,
    StudyResult,
)
from mammo_density.views import SLOTS

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
ORIENTATION = {"R-CC": ["P", "L"], "L-CC": ["A", "R"], "R-MLO": ["P", "L"], "L-MLO": ["A", "R"]}


def mg_image(study_uid: str, slot: str, *, series_uid: str | None = None,
             omit: Iterable[str] = (), patient_name: str = "Test^Patient") -> Dataset:
    """One small MG For Presentation image of ``slot`` (e.g. ``"R-CC"``), just large enough
    for the screening-image gate (256 x 208 pixels of 0.4 mm)."""
    laterality, view = slot.split("-")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_PRESENTATION
    ds.SOPClassUID = MG_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid(entropy_srcs=[study_uid, "series"])
    ds.Modality = "MG"
    ds.PatientName = patient_name
    ds.PatientID = "SR-TEST-1"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = SLOTS.index(slot) + 1
    ds.Manufacturer = "TEST"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.PatientOrientation = ORIENTATION[slot]
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 256
    ds.Columns = 208
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(256 * 208, dtype=np.uint16) % 4096).tobytes()
    for keyword in omit:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def mg_study(slots: Iterable[str] = SLOTS, *, study_uid: str | None = None,
             omit: Iterable[str] = (), patient_name: str = "Test^Patient") -> list[Dataset]:
    study_uid = study_uid or generate_uid()
    omit = tuple(omit)
    return [mg_image(study_uid, s, omit=omit, patient_name=patient_name) for s in slots]


def save_all(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def manifest(*, version: str = "1.0", demo: bool = False) -> ModelManifest:
    return ModelManifest(
        name="density-test", version=version, task="birads4", classes=["A", "B", "C", "D"],
        views={s: f"{s}.onnx" for s in SLOTS}, input_size=64, preprocessing_version="1",
        files_sha256={f"{s}.onnx": f"{i:064x}" for i, s in enumerate(SLOTS)},
        training_data="synthetic test data", not_for_clinical_use=demo,
    )


PROBS = {
    "R": {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2},
    "L": {"A": 0.1, "B": 0.6, "C": 0.2, "D": 0.1},
}


def result_for(sources: list[Dataset], *, agd: dict[str, float] | None = None,
               man: ModelManifest | None = None) -> StudyResult:
    """A result like the pipeline's: right breast C, left B (or whatever sides exist)."""
    man = man or manifest()
    sides = sorted({str(ds.ImageLaterality) for ds in sources}, reverse=True)
    breasts = {}
    for side in sides:
        probs = PROBS[side]
        views = [f"{side}-{ds.ViewPosition}" for ds in sources if ds.ImageLaterality == side]
        breasts[side] = BreastResult(category=max(probs, key=probs.__getitem__),
                                     probabilities=probs, views=views)
    denser = max(breasts.values(), key=lambda b: "ABCD".index(b.category))
    mean = {c: sum(PROBS[s][c] for s in sides) / len(sides) for c in "ABCD"}
    p_dense = mean["C"] + mean["D"]
    used = [f"{ds.ImageLaterality}-{ds.ViewPosition}" for ds in sources]
    missing = [s for s in SLOTS if s not in used]
    dose = None
    if agd:
        dose = DoseSummary(breasts={s: BreastDose(agd_mgy=v, agd_source="headers", exposures=2)
                                    for s, v in agd.items()})
    return StudyResult(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        exam=ExamResult(category=denser.category, probabilities=mean,
                        dense=denser.category in ("C", "D"), p_dense=p_dense,
                        dense_source="birads4"),
        breasts=breasts,
        partial=bool(missing),
        missing_views=missing,
        model=ModelRef(name=man.name, version=man.version, sha256="0" * 64,
                       not_for_clinical_use=man.not_for_clinical_use),
        dose=dose,
    )
