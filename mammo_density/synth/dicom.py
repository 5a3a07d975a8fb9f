"""DICOM writing for synthetic mammograms: headers the way modalities write them, encoding.

One function builds a Digital Mammography X-Ray Image (For Presentation or For Processing)
dataset from the drawn pixels and the acquisition figures; another encodes the pixel data
in one of five transfer syntaxes. Everything is lossless, so a decoder must give back
exactly :func:`stored_values`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from mammo_density.study import codes, sop
from mammo_density.study.codes import Concept
from mammo_density.synth.dose import Exposure
from mammo_density.synth.phantom import patient_orientation
from mammo_density.synth.profiles import VendorProfile

MG_FOR_PRESENTATION = UID(sop.MG_FOR_PRESENTATION)
MG_FOR_PROCESSING = UID(sop.MG_FOR_PROCESSING)

#: CLI name -> transfer syntax UID
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "jpeg-lossless": JPEGLosslessSV1,
    "rle": RLELossless,
}

#: The views (CID 4014) and modifiers (CID 4015) the generator writes, from the one table.
VIEW_CODES: dict[str, Concept] = {v: codes.VIEWS[v] for v in ("CC", "MLO", "XCCL")}
MODIFIER_CODES: dict[str, Concept] = {"spot": codes.MODIFIERS["spot compression"],
                                      "magnification": codes.MODIFIERS["magnification"]}
BREAST_CODE = ("76752008", "T-04000", "Breast")


@dataclass
class ImageSpec:
    """What one image is: laterality, view, modifiers, timing and header style."""

    laterality: str
    view: str
    modifiers: tuple[str, ...] = ()
    for_processing: bool = False
    instance_number: int = 1
    series_number: int = 1
    acquisition_time: str = "090000"
    codes_only: bool = False
    legacy_codes: bool = False
    extra: str = ""
    uids: dict[str, str] = field(default_factory=dict)


def _code(values: Concept | tuple[str, str, str], legacy: bool) -> Dataset:
    """A code item: (SCT code, SRT legacy code, meaning), SRT when ``legacy``."""
    sct, srt, meaning = ((values.sct, values.srt, values.meaning)
                         if isinstance(values, Concept) else values)
    item = Dataset()
    item.CodeValue = srt if legacy else sct
    item.CodingSchemeDesignator = "SRT" if legacy else "SCT"
    item.CodeMeaning = meaning
    return item


def stored_values(display: np.ndarray, profile: VendorProfile, for_processing: bool,
                  gain: float) -> tuple[np.ndarray, str]:
    """Map display values (0 = background/black) to stored pixel values.

    For Presentation keeps the vendor's photometric interpretation; MONOCHROME1 stores
    ``max - value`` so that background (no attenuation) is the maximum stored value and
    still displays black. For Processing images are "raw-looking" (flatter contrast) and
    MONOCHROME1 for every vendor, as detectors deliver them.
    Returns (uint16 array, photometric interpretation).
    """
    maxv = (1 << profile.bits_stored) - 1
    if for_processing:
        level = np.where(display > 0, 0.08 + 0.8 * np.power(display, 1.5), 0.0)
        photometric = "MONOCHROME1"
    else:
        level = display * gain
        photometric = profile.photometric
    values = np.rint(np.clip(level, 0.0, 1.0) * maxv).astype(np.int64)
    values = np.where(display > 0, np.maximum(values, 1), 0)
    if photometric == "MONOCHROME1":
        values = maxv - values
    return values.astype(np.uint16), photometric


def encode(ds: Dataset, pixels: np.ndarray, transfer_syntax: UID) -> None:
    """Put ``pixels`` (uint16 rows x columns) into ``ds`` in ``transfer_syntax`` (lossless)."""
    bits = int(ds.BitsStored)
    if transfer_syntax in (ExplicitVRLittleEndian, RLELossless):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
        if transfer_syntax == RLELossless:
            # pylibjpeg-rle where installed, else pydicom's own; keep our (seeded) UID
            ds.compress(RLELossless, generate_instance_uid=False)
        return
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if transfer_syntax == JPEG2000Lossless:
        frame = imagecodecs.jpeg2k_encode(pixels, codecformat="J2K", reversible=True,
                                          bitspersample=bits, numthreads=1)
    elif transfer_syntax == JPEGLSLossless:
        frame = imagecodecs.jpegls_encode(pixels, level=0)
    elif transfer_syntax == JPEGLosslessSV1:
        frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=bits)
    else:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def window(pixels: np.ndarray, photometric: str, bits: int) -> tuple[float, float]:
    """Vendor-style VOI: a window over the breast's 1st-99.5th percentile of stored values."""
    maxv = (1 << bits) - 1
    breast = pixels[pixels != (maxv if photometric == "MONOCHROME1" else 0)]
    if breast.size == 0:
        return maxv / 2.0, float(maxv)
    lo, hi = np.percentile(breast[:: max(1, breast.size // 20000)], [1.0, 99.5])
    return round(float(lo + hi) / 2.0, 1), max(2.0, round(float(hi - lo) * 1.1, 1))


def build_dataset(spec: ImageSpec, pixels: np.ndarray, photometric: str,
                  profile: VendorProfile, spacing_mm: float, expo: Exposure,
                  patient: dict[str, str], study: dict[str, str]) -> Dataset:
    """A complete Digital Mammography X-Ray Image dataset (pixel data not yet set)."""
    for_processing = spec.for_processing
    sop_class = MG_FOR_PROCESSING if for_processing else MG_FOR_PRESENTATION
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = spec.uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = "MAMMODENSITY_SYN"
    ds.file_meta = meta

    date = study["date"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    image_type = (["ORIGINAL", "PRIMARY"] if for_processing
                  else list(profile.presentation_image_type))
    ds.ImageType = image_type
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = spec.acquisition_time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.uids["sop"]
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = study["time"]
    ds.SeriesTime = study["time"]
    ds.AcquisitionTime = spec.acquisition_time
    ds.ContentTime = spec.acquisition_time
    ds.AccessionNumber = study["accession"]
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = "Synthetic Screening Unit"
    ds.ReferringPhysicianName = ""
    ds.StationName = profile.station
    ds.StudyDescription = "SCREENING MAMMOGRAPHY BILATERAL"
    ds.SeriesDescription = ("Raw mammograms" if for_processing else "Screening mammograms")
    ds.ManufacturerModelName = profile.model
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth_date"]
    ds.PatientSex = "F"
    ds.PatientAge = patient["age"]
    ds.BodyPartExamined = "BREAST"
    ds.DeviceSerialNumber = f"SYN{profile.detector_id[-4:]}"
    ds.SoftwareVersions = profile.software
    ds.ProtocolName = "Screening"
    ds.DistanceSourceToDetector = f"{profile.source_to_detector_mm:.0f}"
    source_to_patient = round(profile.source_to_detector_mm - 20 - expo.thickness_mm)
    ds.DistanceSourceToPatient = str(source_to_patient)
    magn = round(profile.source_to_detector_mm) / source_to_patient
    ds.EstimatedRadiographicMagnificationFactor = f"{magn:.3f}"
    # X-Ray generation and acquisition dose
    ds.KVP = str(expo.kvp)
    ds.ExposureTime = expo.time_ms
    ds.XRayTubeCurrent = expo.tube_current_ma
    ds.Exposure = round(float(expo.mas))
    ds.ExposureInuAs = round(float(expo.mas) * 1000)
    ds.ImagerPixelSpacing = [f"{spacing_mm:.4g}", f"{spacing_mm:.4g}"]
    ds.Grid = "NONE" if "magnification" in spec.modifiers else "RECIPROCATING"
    ds.FocalSpots = "0.1" if "magnification" in spec.modifiers else "0.3"
    ds.AnodeTargetMaterial = expo.anode
    ds.BodyPartThickness = f"{expo.thickness_mm:.0f}"
    ds.CompressionForce = f"{expo.compression_n:.0f}"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.PositionerPrimaryAngle = "0" if spec.view in {"CC", "XCCL"} else (
        "45" if spec.laterality == "R" else "-45")
    ds.DetectorConditionsNominalFlag = "YES"
    ds.DetectorType = profile.detector_type
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = profile.detector_id
    ds.DetectorBinning = [1, 1]
    ds.FilterMaterial = expo.filter
    ds.ExposureControlMode = "AUTOMATIC"
    ds.ExposureControlModeDescription = "AEC"
    ds.ExposureStatus = "NORMAL"
    if not spec.codes_only:
        ds.ViewPosition = spec.view
    # General image, relationship
    ds.StudyInstanceUID = spec.uids["study"]
    ds.SeriesInstanceUID = spec.uids["series"]
    ds.StudyID = study["id"]
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number
    ds.PatientOrientation = patient_orientation(spec.laterality, spec.view)
    ds.ImageLaterality = spec.laterality
    ds.FrameOfReferenceUID = spec.uids.get("frame", spec.uids["series"])
    ds.PositionReferenceIndicator = ""
    # Image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(x) for x in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.QualityControlImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.PixelIntensityRelationship = "LOG"
    # -1: higher stored values mean less X-ray intensity (denser), as MONOCHROME2 shows them
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    if not for_processing:  # VOI belongs to presentation images only
        center, width = window(pixels, photometric, profile.bits_stored)
        ds.WindowCenter = f"{center:.1f}"
        ds.WindowWidth = f"{width:.1f}"
        if profile.voi_function:
            ds.VOILUTFunction = profile.voi_function
        ds.WindowCenterWidthExplanation = "NORMAL"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BreastImplantPresent = "NO"
    # dose
    ds.EntranceDoseInmGy = f"{expo.esak_mgy:.3f}"
    ds.OrganDose = f"{expo.organ_dose_dgy:.5f}"
    ds.OrganExposed = "BREAST"
    ds.CommentsOnRadiationDose = profile.glandular_comment.format(pct=expo.glandular_pct)
    ds.AcquisitionContextSequence = Sequence()
    # anatomy and view codes
    region = _code(BREAST_CODE, spec.legacy_codes)
    ds.AnatomicRegionSequence = Sequence([region])
    view = _code(VIEW_CODES[spec.view], spec.legacy_codes)
    view.ViewModifierCodeSequence = Sequence(
        [_code(MODIFIER_CODES[m], spec.legacy_codes) for m in spec.modifiers])
    ds.ViewCodeSequence = Sequence([view])
    return ds
