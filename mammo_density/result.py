"""The density result: what ``classify --json`` prints, what hooks receive, what the SR
is built from. One schema for the whole product (docs/architecture.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from mammo_density.study.reasons import Reason
from mammo_density.study.slots import SCREENING_VIEWS, SIDES, SLOTS

BIRADS = ("A", "B", "C", "D")
Category = Literal["A", "B", "C", "D"]
# Derived from the slots table (mammo_density.study.slots): a new screening view or side
# is added there, not here.
Side = Literal[SIDES]  # type: ignore[valid-type]
ScreeningView = Literal[SCREENING_VIEWS]  # type: ignore[valid-type]
Slot = Literal[SLOTS]  # type: ignore[valid-type]


class ModelRef(BaseModel):
    """Which model produced the result."""

    name: str
    version: str
    sha256: str = Field(description="sha256 of the model's manifest (covers every file's sha256)")
    task: str = "birads4"
    not_for_clinical_use: bool = False
    training_data: str = ""
    dense_model: str | None = Field(None, description="name/version of a dense2 set, if used")


class ViewQuality(BaseModel):
    """How trustworthy one view's model input is (from preprocessing)."""

    low_confidence: bool = Field(False, description="any flag set")
    flags: list[str] = Field(default_factory=list, description=(
        "reasons for low confidence: tiny image, no breast found, small breast area, "
        "breast covering little of the image, heavy cropping, out-of-distribution "
        "intensity"))
    notes: list[str] = Field(default_factory=list, description=(
        "what the crop removed (film edges, adjacent body parts); informative"))
    breast_area_cm2: float | None = Field(None, description="None without pixel spacing")
    breast_fraction: float = Field(0.0, description="share of the image that is breast")
    foreground_left_out: float = Field(0.0, description=(
        "share of the image's foreground left out of the breast (labels, body parts)"))
    breast_grey_levels: float = Field(0.0, description=(
        "stored grey levels between the breast's 5th and 99.5th percentiles"))


class ViewResult(BaseModel):
    laterality: Side
    view: ScreeningView
    sop_instance_uid: str
    probabilities: dict[str, float] = Field(description="per BI-RADS class, sums to 1")
    p_dense: float | None = Field(None, description="from a dense2 model, where one ran")
    quality: ViewQuality | None = None


class BreastResult(BaseModel):
    category: Category
    probabilities: dict[str, float]
    views: list[str] = Field(default_factory=list, description="slots averaged, e.g. R-CC")
    p_dense: float | None = None


class ExamResult(BaseModel):
    category: Category = Field(description="the denser breast's class (the method's rule)")
    probabilities: dict[str, float] = Field(description="mean of all views' softmax")
    dense: bool
    p_dense: float
    dense_source: Literal["dense2", "birads4"] = Field(
        description="dense2 model set, or P(C)+P(D) of the birads4 set")


class ViewDose(BaseModel):
    """Dose figures of one image, from its header (units in the names)."""

    laterality: str | None = None
    view: str | None = None
    sop_instance_uid: str = ""
    agd_mgy: float | None = None
    entrance_dose_mgy: float | None = None
    thickness_mm: float | None = None
    force_n: float | None = None
    kvp: float | None = None
    exposure_uas: float | None = None
    anode: str | None = None
    filter: str | None = None
    exposure_control_mode: str | None = None
    percent_glandular: float | None = None


class BreastDose(BaseModel):
    agd_mgy: float | None = None
    agd_source: Literal["rdsr", "headers", "none"] = "none"
    mean_thickness_mm: float | None = None
    mean_force_n: float | None = None
    exposures: int = 0


class DoseSummary(BaseModel):
    views: list[ViewDose] = Field(default_factory=list)
    breasts: dict[str, BreastDose] = Field(default_factory=dict)
    total_agd_mgy: float | None = None
    sources: list[str] = Field(default_factory=list, description="rdsr / headers used")
    missing: list[str] = Field(default_factory=list, description="what was looked for, absent")


class Recommendation(BaseModel):
    """Output of a screening rule (issue #9)."""

    rule: str
    text: str
    severity: Literal["info", "warning"] = "info"


class UnusedImage(BaseModel):
    """An image of the study that was not used, and why (mammo_density.study.reasons)."""

    image: str = Field(description="hash of the SOP Instance UID (as in the logs)")
    slot: Slot | None = Field(None, description="the slot it would fill, where it has one")
    laterality: str | None = None
    view: str | None = None
    reason: Reason = Field(description="coded reason")
    text: str = Field(description="the reason in words, with the header values that decided")


class SRRef(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    path: str = ""


class StudyResult(BaseModel):
    """Density result of one study."""

    study_instance_uid: str
    revision: int = 1
    study_date: str | None = Field(None, description="StudyDate (YYYYMMDD) of the images")
    exam: ExamResult | None = Field(None, description="None when not assessable")
    breasts: dict[str, BreastResult] = Field(default_factory=dict)
    views: list[ViewResult] = Field(default_factory=list)
    partial: bool = False
    assessable: bool = True
    missing_views: list[str] = Field(default_factory=list)
    unused_images: list[UnusedImage] = Field(
        default_factory=list, description="images of the study not used, each with its reason")
    implant_present: bool = Field(
        False, description="a used image says BreastImplantPresent YES")
    model: ModelRef | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    dose: DoseSummary | None = None
    recommendations: list[Recommendation] = Field(default_factory=list)
    sr: SRRef | None = None
    low_confidence: bool = Field(False, description=(
        "the class should not be relied on without a reader's look (reasons say why)"))
    low_confidence_reasons: list[str] = Field(default_factory=list)


__all__ = [
    "BIRADS", "BreastDose", "BreastResult", "Category", "DoseSummary", "ExamResult",
    "ModelRef", "Recommendation", "SRRef", "ScreeningView", "Side", "Slot", "StudyResult",
    "UnusedImage", "ViewDose", "ViewQuality", "ViewResult",
]
