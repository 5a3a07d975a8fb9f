"""The screening-image gate: which images may fill a screening slot, and why not.

One rule, read from the header only (no pixel data), used by the listener
(plugin/ingest.py), ``classify``, the dose code (QA images are not exposures), and by
training adapters through :func:`screen`. The Orthanc plugin's stdlib copy applies the
header checks it can see in Orthanc's simplified tags (a test checks both agree).

Accepted
--------
- 2D digital mammograms of the four standard views (R/L CC/MLO, no view modifier), For
  Presentation, or For Processing where a slot has nothing else (:mod:`.selection`);
- synthetic 2D images from tomosynthesis stored as 2D mammograms, and single-frame Breast
  Projection images when labelled synthetic 2D (ImageType / SeriesDescription words such
  as GENERATED_2D, SYNTHETIC, C-View, V-Preview, Insight 2D);
- digitised film (Secondary Capture with Modality MG, laterality and view) only with the
  ``digitised_film`` option (setting ``digitised_film``, default off).

Kept out, each with a :class:`~mammo_density.study.reasons.Reason`, checked in this order
(the first that applies is reported; a stereotactic image's detail also gives its size):

1. tomosynthesis volumes and projections (``tomosynthesis``);
2. quality-control images: the words QC, QA, PHANTOM, FLAT FIELD, CALIBRATION,
   CONSTANCY, UNIFORMITY in ImageType, SeriesDescription, ProtocolName,
   BodyPartExamined, ViewPosition or PerformedProcedureStepDescription
   (``quality_control``);
3. stereotactic / biopsy images: STEREO (ImageType value 3 of stereotactic pairs),
   STEREOTACTIC, BIOPSY in the same fields (``stereotactic``);
4. specimen images: the CID 4014 view "tissue specimen from breast" or the word
   SPECIMEN (``specimen``);
5. Secondary Capture without Modality MG (``not_mammogram``), or with it but the option
   off (``digitised_film_off``);
6. images too small to show a breast (``too_small``): either side of the matrix under
   :data:`MIN_MATRIX_PX` pixels, or, where ImagerPixelSpacing / PixelSpacing is given,
   either side of the field of view under :data:`MIN_FIELD_MM` mm;
7. no laterality R/L (``no_laterality``), no view (``no_view``);
8. a view modifier (CID 4015): spot compression, magnification, implant displaced, any
   other (``modified_view``);
9. a view other than CC and MLO (``non_standard_view``).

Size limits, and why: the smallest screening detectors and film cassettes are 18 x 24 cm
and the smallest compression paddles of screening views cover more than 10 cm, while
stereotactic fields are about 5 x 5 to 7 x 11 cm (the Siemens biopsy image in the test
data is 67 x 112 mm). A short side under 80 mm cannot hold a compressed breast, so
``MIN_FIELD_MM = 80``. The matrix limit catches stubs whose spacing is missing or
scaled (the GE test stubs are 1 x 2 and 4 x 4 pixels with a "pixel spacing" of 54 mm):
below 128 pixels even a coarse 0.2 mm digitiser would cover under 26 mm, and the
smallest model input (128 px) would have to be enlarged from it.

Studies with breast implants (BreastImplantPresent YES) are flagged
(:func:`implant_present`); their standard views are used, implant-displaced views are not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from mammo_density.study import sop
from mammo_density.study.reasons import Reason, note, sentence
from mammo_density.study.slots import SCREENING_VIEWS, SIDES
from mammo_density.study.views import view_info

#: Smallest field of view (short side, mm) of a screening image, where spacing is known.
MIN_FIELD_MM = 80.0
#: Smallest matrix (short side, pixels) of a screening image.
MIN_MATRIX_PX = 128

#: Header fields searched for the words below.
HINT_FIELDS = ("ImageType", "SeriesDescription", "ProtocolName", "BodyPartExamined",
               "ViewPosition", "PerformedProcedureStepDescription")
#: Words (and word pairs) that mark an image, matched on whole words, upper case.
QC_WORDS = ("QC", "QA", "PHANTOM", "FLATFIELD", "FLAT FIELD", "CALIBRATION", "CONSTANCY",
            "UNIFORMITY", "QUALITY CONTROL")
STEREO_WORDS = ("STEREO", "STEREOTACTIC", "STEREOTAXIS", "BIOPSY")
SPECIMEN_WORDS = ("SPECIMEN",)
SYNTHETIC_2D_WORDS = ("GENERATED 2D", "SYNTHETIC", "SYNTHESIZED", "SYNTHESISED", "C VIEW",
                      "CVIEW", "V PREVIEW", "INSIGHT 2D")

#: Modifier (CID 4015 name) -> the reason it keeps an image out; others: MODIFIED_VIEW.
MODIFIER_REASONS: dict[str, Reason] = {
    "spot compression": Reason.SPOT_COMPRESSION,
    "magnification": Reason.MAGNIFICATION,
    "implant displaced": Reason.IMPLANT_DISPLACED,
}

_WORD = re.compile(r"[A-Z0-9]+")


@dataclass(frozen=True)
class Verdict:
    """What the gate says of one instance.

    Attributes
    ----------
    kind
        What the instance is to a study (:data:`mammo_density.study.sop.SOP_KINDS`), or
        ``None`` for a SOP class the product does not take.
    slot
        The screening slot it may fill (``None`` when kept out or not an image).
    reason, detail
        Why it is kept out (``None`` when it is not), with the header values that decided.
    laterality, view
        As read from the header (for reports), where known.
    for_presentation
        The one "For Presentation" rule of :mod:`.sop`.
    implant_present
        BreastImplantPresent (0028,1300) is YES.
    synthetic_2d
        Labelled as a synthetic 2D image from tomosynthesis.
    """

    kind: str | None
    slot: str | None = None
    reason: Reason | None = None
    detail: str = ""
    laterality: str | None = None
    view: str | None = None
    for_presentation: bool = False
    implant_present: bool = False
    synthetic_2d: bool = False

    @property
    def note(self) -> str:
        """The reason as stored by the listener (``""`` when none)."""
        if self.reason is None:
            return ""
        return note(self.reason, self.detail, laterality=self.laterality, view=self.view)

    @property
    def sentence(self) -> str:
        return sentence(self.reason, self.detail) if self.reason else ""


def _words(ds: Dataset, fields: tuple[str, ...] = HINT_FIELDS) -> str:
    parts = []
    for keyword in fields:
        try:
            value = ds.get(keyword)
        except Exception:  # malformed value: no hint from it
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = " ".join(str(v) for v in value)
        parts.append(" ".join(_WORD.findall(str(value).upper())))
    return " " + " ".join(p for p in parts if p) + " "


def _hit(words: str, vocabulary: tuple[str, ...]) -> str:
    return next((w for w in vocabulary if f" {w} " in words), "")


def quality_control_hint(ds: Dataset) -> str:
    """The QC word found in the header (``""`` when none)."""
    return _hit(_words(ds), QC_WORDS)


def is_quality_control(ds: Dataset) -> bool:
    """A quality-control image (flat field, phantom, ...): not a patient exposure."""
    return bool(quality_control_hint(ds))


def implant_present(ds: Dataset) -> bool:
    """BreastImplantPresent (0028,1300) is YES."""
    return str(ds.get("BreastImplantPresent", "") or "").strip().upper() == "YES"


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None


def spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm: ImagerPixelSpacing, else PixelSpacing."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is not None and len(value) >= 2:
                row, col = float(value[0]), float(value[1])
                if row > 0 and col > 0:
                    return row, col
        except (TypeError, ValueError):
            continue
    return None


def size_problem(ds: Dataset) -> str:
    """Why the image is too small for a breast (``""`` when it is not)."""
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        return ""  # the listener's pixel check refuses images without a matrix
    if min(rows, cols) < MIN_MATRIX_PX:
        return f"{rows} x {cols} pixels, under {MIN_MATRIX_PX}"
    spacing = spacing_mm(ds)
    if spacing is not None:
        height, width = rows * spacing[0], cols * spacing[1]
        if min(height, width) < MIN_FIELD_MM:
            return f"field of view {height:.0f} x {width:.0f} mm, under {MIN_FIELD_MM:.0f} mm"
    return ""


def _size_text(ds: Dataset) -> str:
    """The size, said beside another reason: too small, or the field of view."""
    problem = size_problem(ds)
    if problem:
        return "; " + problem
    spacing = spacing_mm(ds)
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if spacing is None or rows is None or cols is None:
        return ""
    return f"; field of view {rows * spacing[0]:.0f} x {cols * spacing[1]:.0f} mm"


def screen(ds: Dataset, *, digitised_film: bool = False) -> Verdict:
    """The gate's verdict on one instance's header (see the module docstring)."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    kind = sop.kind_of(sop_class, digitised_film=True)
    if kind not in sop.IMAGE_KINDS:
        return Verdict(kind=kind)
    info = view_info(ds)
    words = _words(ds)
    frames = _int(ds, "NumberOfFrames") or 1
    synthetic = bool(_hit(words, SYNTHETIC_2D_WORDS))
    common = {"laterality": info.laterality, "view": info.view,
              "for_presentation": sop.dataset_is_for_presentation(ds),
              "implant_present": implant_present(ds), "synthetic_2d": synthetic}
    if kind == sop.KIND_TOMO:
        if not (synthetic and frames == 1 and sop_class != sop.BREAST_TOMOSYNTHESIS):
            return Verdict(kind=kind, reason=Reason.TOMOSYNTHESIS,
                           detail=f"{frames} frame(s)", **common)
        kind = sop.KIND_IMAGE

    def out(reason: Reason, detail: str) -> Verdict:
        return Verdict(kind=kind, reason=reason, detail=detail, **common)

    hint = _hit(words, QC_WORDS)
    if hint:
        return out(Reason.QUALITY_CONTROL, f"header says {hint}")
    hint = _hit(words, STEREO_WORDS)
    if hint:
        return out(Reason.STEREOTACTIC, f"header says {hint}{_size_text(ds)}")
    hint = "view " + info.view if info.view == "SPECIMEN" else _hit(words, SPECIMEN_WORDS)
    if hint:
        return out(Reason.SPECIMEN, f"header says {hint}")
    if sop_class == sop.SECONDARY_CAPTURE:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if modality != "MG":
            return out(Reason.NOT_MAMMOGRAM, f"Secondary Capture, Modality {modality or 'empty'}")
        if not digitised_film:
            return out(Reason.DIGITISED_FILM_OFF, "")
    problem = size_problem(ds)
    if problem:
        return out(Reason.TOO_SMALL, problem)
    if info.laterality not in SIDES:
        return out(Reason.NO_LATERALITY, f"laterality {info.laterality or 'missing'}")
    if info.view is None:
        return out(Reason.NO_VIEW, "")
    if info.modifiers:
        names = info.modifier_names
        reason = next((MODIFIER_REASONS[n] for n in names if n in MODIFIER_REASONS),
                      Reason.MODIFIED_VIEW)
        return out(reason, "modifier " + ", ".join(names))
    if info.view not in SCREENING_VIEWS:
        return out(Reason.NON_STANDARD_VIEW, f"view {info.view}")
    return Verdict(kind=kind, slot=info.slot, **common)


def screen_file(path: str | Path, *, digitised_film: bool = False) -> Verdict:
    """:func:`screen` of a DICOM file's header (pixel data not read), for callers that
    hold files rather than data sets (training adapters). An unreadable file is kept out
    as ``unreadable``."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as err:
        return Verdict(kind=None, reason=Reason.UNREADABLE, detail=type(err).__name__)
    return screen(ds, digitised_film=digitised_film)


__all__ = ["HINT_FIELDS", "MIN_FIELD_MM", "MIN_MATRIX_PX", "MODIFIER_REASONS", "QC_WORDS",
           "SPECIMEN_WORDS", "STEREO_WORDS",
           "SYNTHETIC_2D_WORDS", "Verdict", "implant_present", "is_quality_control",
           "quality_control_hint", "screen", "screen_file", "size_problem", "spacing_mm"]
