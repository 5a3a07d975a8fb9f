"""The density result: what ``classify --json`` prints, what hooks receive, what the SR
is built from. One schema for the whole product (DESIGN.md "Contracts", issue #5/#9)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

BIRADS = ("A", "B", "C", "D")
Category = Literal["A", "B", "C", "D"]
Side = Literal["R", "L"]


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
    view: Literal["CC", "MLO"]
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
    "ModelRef", "Recommendation", "SRRef", "StudyResult", "ViewDose", "ViewQuality",
    "ViewResult",
]
