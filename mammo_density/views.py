"""Laterality and view of a mammogram, read the ways real modalities write them.

Shared by the listener (study assembly), preprocessing (orientation) and the SR (image
library). Rules from DESIGN.md:

- Laterality: ImageLaterality (0020,0062), else Laterality (0020,0060), else the
  FrameLaterality of the first frame's functional groups.
- View: ViewPosition (0018,5101), else the ViewCodeSequence (0054,0220) code: SNOMED CT
  (current) or the legacy SNOMED RT (SRT) codes of the same concepts.
- Only unmodified CC and MLO views fill the four screening slots; spot compression,
  magnification, implant-displaced and other modified views (ViewModifierCodeSequence),
  and other projections (XCCL, ML, LM, ...) are kept but not slotted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

SLOTS: tuple[str, ...] = ("R-CC", "L-CC", "R-MLO", "L-MLO")
SCREENING_VIEWS = ("CC", "MLO")

# View codes of PS3.16 CID 4014 "View for Mammography": the SNOMED CT code and the legacy
# SNOMED RT (SRT/SNM3) code of each concept, to the short names used in ViewPosition.
# Checked against pydicom's copy of CID 4014 (tests/test_views.py) and PS3.16 Table CID 4014.
VIEW_CODES: dict[str, str] = {
    "399162004": "CC",    # cranio-caudal
    "R-10242": "CC",
    "399368009": "MLO",   # medio-lateral oblique
    "R-10226": "MLO",
    "399260004": "ML",    # medio-lateral
    "R-10224": "ML",
    "399352003": "LM",    # latero-medial
    "R-10228": "LM",
    "399099002": "LMO",   # latero-medial oblique
    "R-10230": "LMO",
    "399192008": "XCCL",  # cranio-caudal exaggerated laterally
    "R-1024A": "XCCL",
    "399101009": "XCCM",  # cranio-caudal exaggerated medially
    "R-1024B": "XCCM",
    "399196006": "FB",    # caudo-cranial (from below)
    "R-10244": "FB",
    "399188001": "SIO",   # superolateral to inferomedial oblique
    "R-102D0": "SIO",
    "441555000": "ISO",   # inferomedial to superolateral oblique
    "R-40AAA": "ISO",
    "127457009": "SPECIMEN",  # tissue specimen from breast
    "G-8310": "SPECIMEN",
    "R-102CF": "XCC",     # exaggerated cranio-caudal (retired SNM3 code, still in old headers)
}

# View modifiers of PS3.16 CID 4015 "View Modifier for Mammography" (SCT and legacy SRT),
# for readable log lines; any modifier at all keeps an image out of the screening slots.
MODIFIER_CODES: dict[str, str] = {
    "399161006": "cleavage", "R-102D2": "cleavage",
    "399011000": "axillary tail", "R-102D1": "axillary tail",
    "399197002": "rolled lateral", "R-102D3": "rolled lateral",
    "399226006": "rolled medial", "R-102D4": "rolled medial",
    "414493004": "rolled inferior", "R-102CA": "rolled inferior",
    "415670009": "rolled superior", "R-102C9": "rolled superior",
    "399209000": "implant displaced", "R-102D5": "implant displaced",
    "399163009": "magnification", "R-102D6": "magnification",
    "399055006": "spot compression", "R-102D7": "spot compression",
    "399110001": "tangential", "R-102C2": "tangential",
    "442581004": "nipple in profile", "R-40AB3": "nipple in profile",
    "441752004": "anterior compression", "P2-00161": "anterior compression",
    "442593008": "infra-mammary fold", "R-40ABE": "infra-mammary fold",
    "442580003": "axillary tissue", "R-40AB2": "axillary tissue",
}

# ViewPosition spellings seen in headers, to the same short names.
_VIEW_POSITIONS = {"CC": "CC", "MLO": "MLO", "ML": "ML", "LM": "LM", "LMO": "LMO",
                   "XCCL": "XCCL", "XCCM": "XCCM", "XCC": "XCC", "FB": "FB", "SIO": "SIO",
                   "ISO": "ISO", "RL": "RL", "RM": "RM", "AT": "AT", "CV": "CV"}

# ViewPosition spellings that mean a modified view: XCCL is a projection of its own.
_MODIFIED_POSITIONS = {"RL", "RM", "AT", "CV"}


@dataclass(frozen=True)
class ViewInfo:
    """What an image shows.

    Attributes
    ----------
    laterality
        ``"R"``, ``"L"``, ``"B"`` (both) or ``None`` when the header does not say.
    view
        Short view name (``"CC"``, ``"MLO"``, ``"XCCL"``, ...) or ``None``.
    modifiers
        Code values of ViewModifierCodeSequence items (spot compression, magnification,
        implant displaced, ...).
    source
        Where the view came from: ``"ViewPosition"``, ``"ViewCodeSequence"`` or ``""``.
    """

    laterality: str | None
    view: str | None
    modifiers: tuple[str, ...] = field(default=())
    source: str = ""

    @property
    def slot(self) -> str | None:
        """The screening slot (``"R-CC"``, ...) this image can fill, else ``None``."""
        if self.laterality in ("R", "L") and self.view in SCREENING_VIEWS and not self.modifiers:
            return f"{self.laterality}-{self.view}"
        return None

    @property
    def not_slotted_reason(self) -> str:
        """Why :attr:`slot` is ``None`` (empty when the image fills a slot)."""
        if self.slot:
            return ""
        if self.laterality not in ("R", "L"):
            return "laterality missing or not R/L"
        if self.view is None:
            return "view missing"
        if self.view not in SCREENING_VIEWS:
            return f"view {self.view} is not a screening view"
        return "modified view (" + ",".join(self.modifiers) + ")"


def _code_of(item: Dataset) -> str:
    return str(item.get("CodeValue", "") or item.get("LongCodeValue", "") or "").strip()


def laterality_of(ds: Dataset) -> str | None:
    """Laterality from ImageLaterality, Laterality, then FrameLaterality."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("R", "L", "B"):
            return value
    for groups in (ds.get("SharedFunctionalGroupsSequence"),
                   ds.get("PerFrameFunctionalGroupsSequence")):
        if not groups:
            continue
        for frame_anatomy in groups[0].get("FrameAnatomySequence", []) or []:
            value = str(frame_anatomy.get("FrameLaterality", "") or "").strip().upper()
            if value in ("R", "L", "B"):
                return value
    return None


def view_info(ds: Dataset) -> ViewInfo:
    """Laterality, view and modifiers of a mammogram's header (pixel data not needed)."""
    laterality = laterality_of(ds)
    view: str | None = None
    source = ""
    modifiers: list[str] = []
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position in _VIEW_POSITIONS:
        view, source = _VIEW_POSITIONS[position], "ViewPosition"
        if position in _MODIFIED_POSITIONS:
            view, modifiers = None, [position]
    codes = ds.get("ViewCodeSequence") or []
    for item in codes:
        if view is None and _code_of(item) in VIEW_CODES:
            view, source = VIEW_CODES[_code_of(item)], "ViewCodeSequence"
        for mod in item.get("ViewModifierCodeSequence", []) or []:
            if _code_of(mod):
                modifiers.append(_code_of(mod))
    # Some modalities put the modifier sequence at the top level of the dataset.
    for mod in ds.get("ViewModifierCodeSequence", []) or []:
        if _code_of(mod) and _code_of(mod) not in modifiers:
            modifiers.append(_code_of(mod))
    return ViewInfo(laterality, view, tuple(modifiers), source)
