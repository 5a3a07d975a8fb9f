"""Laterality and view of a mammogram, read the ways real modalities write them.

- Laterality: ImageLaterality (0020,0062), else Laterality (0020,0060), else the
  FrameLaterality of the first frame's functional groups.
- View: ViewPosition (0018,5101), else the ViewCodeSequence (0054,0220) code: SNOMED CT
  (current) or the legacy SNOMED RT (SRT) codes of the same concepts
  (:mod:`mammo_density.study.codes`).
- Modifiers: ViewModifierCodeSequence inside the view code item or at the top level, and
  the ViewPosition spellings of modified views (RL, RM, AT, CV; ``...ID`` for implant
  displaced, e.g. ``CCID``).

Only unmodified CC and MLO views fill the screening slots (:mod:`.slots`); which images
are screening images at all (size, QA, stereotactic, ...) is the gate's job
(:mod:`.gate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from mammo_density.study.codes import MODIFIER_BY_CODE, MODIFIERS, VIEW_BY_CODE, VIEWS
from mammo_density.study.slots import SCREENING_VIEWS, SIDES, slot_name

#: ViewPosition spellings of modified views -> the modifier they mean (CID 4015).
MODIFIED_POSITIONS: dict[str, str] = {"RL": "rolled lateral", "RM": "rolled medial",
                                      "AT": "axillary tail", "CV": "cleavage"}
#: Suffix of ViewPosition for implant-displaced views (``CCID``, ``MLOID``).
IMPLANT_DISPLACED_SUFFIX = "ID"


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
        implant displaced, ...); a modified ViewPosition adds the modifier's SCT code.
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
        return slot_name(self.laterality, self.view, self.modifiers)

    @property
    def modifier_names(self) -> tuple[str, ...]:
        """Readable names of :attr:`modifiers` (the code itself when unknown)."""
        return tuple(MODIFIER_BY_CODE.get(code, code) for code in self.modifiers)

    @property
    def not_slotted_reason(self) -> str:
        """Why :attr:`slot` is ``None`` (empty when the image fills a slot)."""
        if self.slot:
            return ""
        if self.laterality not in SIDES:
            return "laterality missing or not R/L"
        if self.view is None:
            return "view missing"
        if self.view not in SCREENING_VIEWS:
            return f"view {self.view} is not a screening view"
        return "modified view (" + ",".join(self.modifier_names) + ")"


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
    if position in VIEWS:
        view, source = position, "ViewPosition"
    elif position in MODIFIED_POSITIONS:
        modifiers.append(MODIFIERS[MODIFIED_POSITIONS[position]].sct)
        source = "ViewPosition"
    elif position.endswith(IMPLANT_DISPLACED_SUFFIX) and \
            position[:-len(IMPLANT_DISPLACED_SUFFIX)] in VIEWS:
        view, source = position[:-len(IMPLANT_DISPLACED_SUFFIX)], "ViewPosition"
        modifiers.append(MODIFIERS["implant displaced"].sct)
    for item in ds.get("ViewCodeSequence") or []:
        code = _code_of(item)
        if view is None and code in VIEW_BY_CODE:
            view, source = VIEW_BY_CODE[code], "ViewCodeSequence"
        for mod in item.get("ViewModifierCodeSequence", []) or []:
            if _code_of(mod) and _code_of(mod) not in modifiers:
                modifiers.append(_code_of(mod))
    # Some modalities put the modifier sequence at the top level of the dataset.
    for mod in ds.get("ViewModifierCodeSequence", []) or []:
        if _code_of(mod) and _code_of(mod) not in modifiers:
            modifiers.append(_code_of(mod))
    return ViewInfo(laterality, view, tuple(modifiers), source)


__all__ = ["IMPLANT_DISPLACED_SUFFIX", "MODIFIED_POSITIONS", "ViewInfo", "laterality_of",
           "view_info"]
