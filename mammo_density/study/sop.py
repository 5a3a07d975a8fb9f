"""Every SOP class the product knows, what each is to a study, and "For Presentation".

The SOP Class UIDs are written here once; the listener (which classes it accepts at
association and how it files them), ``classify``, preprocessing, the dose code and the SR
reader import them. The Orthanc plugin's stdlib copy is checked against them by a test.

"For Presentation": one rule
----------------------------
An image is For Presentation when its **SOP class** says so (Digital Mammography X-Ray
Image Storage - For Presentation, Breast Projection X-Ray Image Storage - For
Presentation), For Processing when its SOP class says so. PresentationIntentType
(0008,0068) is read only for classes whose SOP class does not carry the intent (Secondary
Capture of digitised film: For Presentation unless the header says FOR PROCESSING).

Why the SOP class and not PresentationIntentType first: the two classes exist *because*
of the intent (PS3.3 A.26: the IOD fixes PresentationIntentType to match), so they only
disagree in a broken header; the SOP class is what the association negotiated, what the
listener records in its state and what PACS viewers hang by, so deciding by it makes the
listener (``serve``), ``classify`` and preprocessing agree even on such a header.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

# --- images ---------------------------------------------------------------------------
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
BREAST_PROJECTION_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"
BREAST_PROJECTION_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # digitised film (Modality MG), as an option

# --- structured reports ---------------------------------------------------------------
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every SR storage class starts so
XRAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
ENHANCED_XRAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.76"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

#: Dose reports read for the dose figures.
RDSR_CLASSES = frozenset({XRAY_RADIATION_DOSE_SR, ENHANCED_XRAY_RADIATION_DOSE_SR})
#: 2D mammography image classes that may fill a screening slot.
MAMMO_IMAGE_CLASSES = frozenset({MG_FOR_PRESENTATION, MG_FOR_PROCESSING})
#: Classes whose class itself says For Presentation / For Processing.
FOR_PRESENTATION_CLASSES = frozenset({MG_FOR_PRESENTATION, BREAST_PROJECTION_FOR_PRESENTATION})
FOR_PROCESSING_CLASSES = frozenset({MG_FOR_PROCESSING, BREAST_PROJECTION_FOR_PROCESSING})

# --- what each accepted class is to a study -------------------------------------------
KIND_IMAGE = "image"  # 2D mammogram: may fill a slot (after the screening-image gate)
KIND_TOMO = "tomo"  # tomosynthesis volume / projections: stored, not classified
KIND_RDSR = "rdsr"  # dose report, for the dose figures and hooks
KIND_SR = "sr"  # other structured reports (our own SR coming back): stored, ignored
IMAGE_KINDS = (KIND_IMAGE, KIND_TOMO)

SOP_KINDS: dict[str, str] = {
    MG_FOR_PRESENTATION: KIND_IMAGE,
    MG_FOR_PROCESSING: KIND_IMAGE,
    BREAST_TOMOSYNTHESIS: KIND_TOMO,
    BREAST_PROJECTION_FOR_PRESENTATION: KIND_TOMO,
    BREAST_PROJECTION_FOR_PROCESSING: KIND_TOMO,
    XRAY_RADIATION_DOSE_SR: KIND_RDSR,
    ENHANCED_XRAY_RADIATION_DOSE_SR: KIND_RDSR,
    BASIC_TEXT_SR: KIND_SR,
    ENHANCED_SR: KIND_SR,
    COMPREHENSIVE_SR: KIND_SR,
    COMPREHENSIVE_3D_SR: KIND_SR,
}


def accepted_classes(*, digitised_film: bool = False) -> dict[str, str]:
    """SOP class -> kind of every class the listener accepts; Secondary Capture (digitised
    film) only with the ``digitised_film`` option."""
    kinds = dict(SOP_KINDS)
    if digitised_film:
        kinds[SECONDARY_CAPTURE] = KIND_IMAGE
    return kinds


def kind_of(sop_class: str, *, digitised_film: bool = False) -> str | None:
    """What an instance of ``sop_class`` is to a study (``None``: not accepted)."""
    return accepted_classes(digitised_film=digitised_film).get(str(sop_class).strip())


def is_structured_report(sop_class: str) -> bool:
    return str(sop_class).startswith(SR_CLASS_PREFIX)


def is_for_presentation(sop_class: str, presentation_intent: str = "") -> bool:
    """The one "For Presentation" rule (see the module docstring)."""
    sop_class = str(sop_class).strip()
    if sop_class in FOR_PRESENTATION_CLASSES:
        return True
    if sop_class in FOR_PROCESSING_CLASSES:
        return False
    return str(presentation_intent or "").strip().upper() != "FOR PROCESSING"


def dataset_is_for_presentation(ds: Dataset) -> bool:
    """:func:`is_for_presentation` of a header."""
    return is_for_presentation(str(ds.get("SOPClassUID", "") or ""),
                               str(ds.get("PresentationIntentType", "") or ""))


__all__ = [
    "BASIC_TEXT_SR", "BREAST_PROJECTION_FOR_PRESENTATION", "BREAST_PROJECTION_FOR_PROCESSING",
    "BREAST_TOMOSYNTHESIS", "COMPREHENSIVE_3D_SR", "COMPREHENSIVE_SR", "ENHANCED_SR",
    "ENHANCED_XRAY_RADIATION_DOSE_SR", "FOR_PRESENTATION_CLASSES", "FOR_PROCESSING_CLASSES",
    "IMAGE_KINDS", "KIND_IMAGE", "KIND_RDSR", "KIND_SR", "KIND_TOMO", "MAMMO_IMAGE_CLASSES",
    "MG_FOR_PRESENTATION", "MG_FOR_PROCESSING", "RDSR_CLASSES", "SECONDARY_CAPTURE",
    "SOP_KINDS", "SR_CLASS_PREFIX", "XRAY_RADIATION_DOSE_SR", "accepted_classes",
    "dataset_is_for_presentation", "is_for_presentation", "is_structured_report", "kind_of",
]
