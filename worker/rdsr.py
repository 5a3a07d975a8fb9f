"""Read mammography dose figures from X-Ray Radiation Dose SRs (TID 10001 / 10003 / 10005).

The content tree is walked with pydicom; items are recognised by their concept code
(DCM / SRT / SCT), falling back on the code meaning, because vendors differ:

- Hologic and GE put the laterality as a concept modifier of "Anatomical structure"
  (T-D0005); IMS Giotto puts it under "Image View" (111031).
- Hologic reports one Accumulated Average Glandular Dose (111637) per breast, with a
  laterality modifier (T-04020 "Right breast" / T-04030 "Left breast").
- GE Pristina and IMS Giotto write one KVP / tube current / exposure value *per pulse*
  inside one irradiation event; here kVp is their mean, exposure their sum, and
  tube current x pulse width per pulse where no exposure (113736) is given.
- IMS Giotto codes "Anode Target Material" as 113632 instead of 111632.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from mammo_density.study.codes import LATERALITY, VIEW_BY_CODE
from mammo_density.study.sop import RDSR_CLASSES

log = logging.getLogger(__name__)

#: SOP classes of dose reports we read.
RDSR_SOP_CLASSES = RDSR_CLASSES

# Concept codes (CodeValue; designators DCM unless noted).
ACCUMULATED_DATA = "113702"           # Accumulated X-Ray Dose Data
IRRADIATION_EVENT = "113706"          # Irradiation Event X-Ray Data
ACCUMULATED_AGD = "111637"            # Accumulated Average Glandular Dose
AGD = "111631"                        # Average Glandular Dose
ENTRANCE_AT_RP = "111636"             # Entrance Exposure at RP
COMPRESSION_THICKNESS = "111633"      # Compression Thickness
COMPRESSION_FORCE = "111647"          # Compression Force
KVP = "113733"
TUBE_CURRENT = "113734"               # X-Ray Tube Current (mA)
EXPOSURE_TIME = "113824"              # Exposure Time (ms)
PULSE_WIDTH = "113793"                # Pulse Width (ms)
EXPOSURE = "113736"                   # Exposure (uAs)
ANODE = ("111632", "113632")          # Anode Target Material (113632 as IMS writes it)
FILTER_MATERIAL = "113757"
IMAGE_VIEW = "111031"
EVENT_UID = "113769"
ANATOMY = ("T-D0005", "91723000")     # Anatomical structure (SRT, SCT)
ACQUIRED_IMAGE = "113795"
LATERALITY_CONCEPTS = ("G-C171", "272741003")
STUDY_UID_CONCEPT = "110180"

# CID 244 laterality, and the anatomy codes "right breast" / "left breast" (SRT, SCT).
_RIGHT = {*LATERALITY["R"].values, "T-04020", "80248007"}
_LEFT = {*LATERALITY["L"].values, "T-04030", "73056007"}

_DOSE_UNITS_TO_MGY = {"mgy": 1.0, "dgy": 100.0, "gy": 1000.0, "ugy": 0.001, "cgy": 10.0}
_EXPOSURE_UNITS_TO_UAS = {"uas": 1.0, "ua.s": 1.0, "mas": 1000.0, "ma.s": 1000.0, "as": 1e6,
                          "a.s": 1e6}


@dataclass
class RdsrEvent:
    """One irradiation event of a dose report (units in the names)."""

    event_uid: str = ""
    laterality: str | None = None
    view: str | None = None
    agd_mgy: float | None = None
    entrance_mgy: float | None = None
    thickness_mm: float | None = None
    force_n: float | None = None
    kvp: float | None = None
    exposure_uas: float | None = None
    anode: str | None = None
    filter: str | None = None
    image_uids: list[str] = field(default_factory=list)


@dataclass
class RdsrReport:
    """What one dose report says: events and accumulated AGD per breast (mGy)."""

    sop_instance_uid: str
    study_instance_uid: str
    events: list[RdsrEvent] = field(default_factory=list)
    accumulated_agd_mgy: dict[str, float] = field(default_factory=dict)
    manufacturer: str = ""


def is_rdsr(ds: Dataset) -> bool:
    """True for an (Enhanced) X-Ray Radiation Dose SR."""
    return str(ds.get("SOPClassUID", "")) in RDSR_SOP_CLASSES


def _code(item: Dataset, keyword: str) -> tuple[str, str]:
    seq = item.get(keyword)
    if not seq:
        return "", ""
    first = seq[0]
    value = str(first.get("CodeValue", "") or first.get("LongCodeValue", "") or "").strip()
    return value, str(first.get("CodeMeaning", "") or "").strip()


def concept(item: Dataset) -> tuple[str, str]:
    """(code value, meaning) of an item's concept name."""
    return _code(item, "ConceptNameCodeSequence")


def code_value(item: Dataset) -> tuple[str, str]:
    """(code value, meaning) of a CODE item's value."""
    return _code(item, "ConceptCodeSequence")


def children(item: Dataset) -> Iterable[Dataset]:
    return item.get("ContentSequence") or ()


def num_value(item: Dataset) -> tuple[float | None, str]:
    """(value, unit code) of a NUM item; ``None`` when absent or unreadable."""
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return None, ""
    mv = seq[0]
    try:
        value = float(mv.get("NumericValue"))
    except (TypeError, ValueError):
        return None, ""
    unit, _ = _code(mv, "MeasurementUnitsCodeSequence")
    return value, unit


def _scaled(item: Dataset, table: dict[str, float], default_unit: str) -> float | None:
    value, unit = num_value(item)
    if value is None:
        return None
    factor = table.get((unit or default_unit).lower())
    if factor is None:
        log.warning("unexpected unit %r for %s; value ignored", unit, concept(item)[1])
        return None
    return value * factor


def laterality_code(value: str, meaning: str) -> str | None:
    """``"R"`` / ``"L"`` from a laterality code (SRT or SCT), else from its meaning."""
    if value in _RIGHT:
        return "R"
    if value in _LEFT:
        return "L"
    text = meaning.lower()
    if "right" in text:
        return "R"
    if "left" in text:
        return "L"
    return None


def _laterality_below(item: Dataset) -> str | None:
    for child in children(item):
        if concept(child)[0] in LATERALITY_CONCEPTS or concept(child)[1].lower() == "laterality":
            side = laterality_code(*code_value(child))
            if side:
                return side
    return None


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in children(item):
        yield child
        yield from _walk(child)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def parse_event(container: Dataset) -> RdsrEvent:
    """One "Irradiation Event X-Ray Data" container (TID 10003)."""
    ev = RdsrEvent()
    kvps: list[float] = []
    currents: list[float] = []
    pulses: list[float] = []
    exposures: list[float] = []
    times: list[float] = []
    filters: list[str] = []
    sides: list[tuple[int, str]] = []
    for item in _walk(container):
        code, meaning = concept(item)
        vtype = str(item.get("ValueType", ""))
        if code == EVENT_UID and vtype == "UIDREF":
            ev.event_uid = str(item.get("UID", ""))
        elif vtype == "CODE" and (side := _laterality_below(item)):
            # Laterality modifies "Anatomical structure" (Hologic, GE), "Target Region"
            # (IMS Giotto) or "Image View"; the anatomical structure wins.
            rank = 0 if code in ANATOMY else 1
            sides.append((rank, side))
            if code == IMAGE_VIEW:
                ev.view = VIEW_BY_CODE.get(code_value(item)[0]) or code_value(item)[1] or None
        elif code == IMAGE_VIEW and vtype == "CODE":
            ev.view = VIEW_BY_CODE.get(code_value(item)[0]) or code_value(item)[1] or None
        elif vtype == "IMAGE":
            for ref in item.get("ReferencedSOPSequence") or ():
                uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                if uid:
                    ev.image_uids.append(uid)
        elif vtype == "NUM":
            if code == AGD:
                ev.agd_mgy = _scaled(item, _DOSE_UNITS_TO_MGY, "mGy")
            elif code == ENTRANCE_AT_RP:
                ev.entrance_mgy = _scaled(item, _DOSE_UNITS_TO_MGY, "mGy")
            elif code == COMPRESSION_THICKNESS:
                ev.thickness_mm = _scaled(item, {"mm": 1.0, "cm": 10.0}, "mm")
            elif code == COMPRESSION_FORCE:
                ev.force_n = _scaled(item, {"n": 1.0, "dan": 10.0}, "N")
            elif code == KVP:
                value, _ = num_value(item)
                if value is not None:
                    kvps.append(value)
            elif code == TUBE_CURRENT:
                value = _scaled(item, {"ma": 1.0, "ua": 0.001}, "mA")
                if value is not None:
                    currents.append(value)
            elif code == PULSE_WIDTH:
                value = _scaled(item, {"ms": 1.0, "s": 1000.0, "us": 0.001}, "ms")
                if value is not None:
                    pulses.append(value)
            elif code == EXPOSURE_TIME:
                value = _scaled(item, {"ms": 1.0, "s": 1000.0, "us": 0.001}, "ms")
                if value is not None:
                    times.append(value)
            elif code == EXPOSURE:
                value = _scaled(item, _EXPOSURE_UNITS_TO_UAS, "uAs")
                if value is not None:
                    exposures.append(value)
        elif vtype == "CODE":
            if code in ANODE or meaning.lower() == "anode target material":
                ev.anode = _material(code_value(item)[1])
            elif code == FILTER_MATERIAL:
                name = _material(code_value(item)[1])
                if name and name not in filters:
                    filters.append(name)
    if sides:
        ev.laterality = min(sides)[1]
    ev.kvp = _mean(kvps)
    if exposures:
        ev.exposure_uas = sum(exposures)
    elif currents and pulses and len(currents) == len(pulses):
        ev.exposure_uas = sum(c * p for c, p in zip(currents, pulses, strict=True))  # mA*ms
    elif currents and times:
        ev.exposure_uas = _mean(currents) * sum(times)
    ev.filter = ",".join(filters) or None
    return ev


def _material(meaning: str) -> str | None:
    """``"Rhodium or Rhodium compound"`` -> ``"RHODIUM"`` (as headers write it)."""
    text = meaning.strip()
    if not text:
        return None
    return text.split(" or ")[0].strip().upper()


def parse_rdsr(ds: Dataset) -> RdsrReport:
    """Events and accumulated AGD per breast of one dose report."""
    report = RdsrReport(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
    )
    for item in children(ds):
        code, _ = concept(item)
        if code == IRRADIATION_EVENT:
            report.events.append(parse_event(item))
        elif code == ACCUMULATED_DATA:
            for acc in _walk(item):
                if concept(acc)[0] != ACCUMULATED_AGD or acc.get("ValueType") != "NUM":
                    continue
                value = _scaled(acc, _DOSE_UNITS_TO_MGY, "mGy")
                side = _laterality_below(acc)
                if value is None:
                    continue
                if side is None:
                    log.info("accumulated AGD without laterality in dose report; ignored")
                    continue
                report.accumulated_agd_mgy[side] = report.accumulated_agd_mgy.get(side, 0.0) + value
    return report


def scope_study_uids(ds: Dataset) -> set[str]:
    """StudyInstanceUID of the report and the one named in its Scope of Accumulation."""
    uids = {str(ds.get("StudyInstanceUID", ""))}
    for item in children(ds):
        for sub in children(item):
            if concept(sub)[0] == STUDY_UID_CONCEPT and sub.get("UID"):
                uids.add(str(sub.UID))
    uids.discard("")
    return uids


__all__ = ["RDSR_SOP_CLASSES", "RdsrEvent", "RdsrReport", "is_rdsr", "parse_event",
           "parse_rdsr", "scope_study_uids"]
