"""Dose figures of a mammography study: per exposure, per breast and per exam.

Sources, best first:

1. The study's own X-Ray Radiation Dose SRs (``rdsr_datasets``; see :mod:`.rdsr`): one
   view per irradiation event, and the accumulated average glandular dose (AGD) per breast
   as the modality reports it (TID 10005), else the sum of the events' AGD.
2. The image headers (``image_datasets``, headers only): OrganDose (0040,0316) in dGy,
   EntranceDoseInmGy (0040,8302) or EntranceDose (0040,0302, dGy), BodyPartThickness
   (0018,11A0, mm), CompressionForce (0018,11A2, N), KVP, ExposureInuAs (or tube current x
   time, or Exposure in mAs), AnodeTargetMaterial, FilterMaterial, ExposureControlMode and
   the percent glandular tissue vendors write in CommentsOnRadiationDose.

Quality-control images (flat field, phantom: :func:`mammo_density.study.gate.is_quality_control`)
are not patient exposures and are not counted.

One exposure can be stored twice (For Processing and For Presentation); such images count
once (same IrradiationEventUID, or same laterality, view, acquisition time and exposure).
When a dose report is present its events are the views; an image header of the same event
(matched by SOP Instance UID or IrradiationEventUID) fills what the report lacks
(compression force, percent glandular, exposure control mode).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from mammo_density.logsetup import uid_hash
from mammo_density.result import BreastDose, DoseSummary, ViewDose
from mammo_density.study.gate import is_quality_control
from mammo_density.study.sop import is_structured_report
from mammo_density.study.views import view_info
from mammo_density.worker.rdsr import RdsrEvent, RdsrReport, is_rdsr, parse_rdsr, scope_study_uids

log = logging.getLogger(__name__)

_GLANDULAR_KEYWORD = re.compile(r"GLAND\w*\s*(?:TISSUE)?\s*[:=]?\s*(\d+(?:[.,]\d+)?)\s*%?",
                                re.IGNORECASE)
_PERCENT = re.compile(r"(\d+(?:[.,]\d+)?)\s*%")
_BARE_NUMBER = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*$")


#: Fields whose absence is reported in :attr:`DoseSummary.missing`.
_KEY_FIELDS = ("agd_mgy", "thickness_mm", "kvp", "force_n")


def _num(ds: Dataset, keyword: str) -> float | None:
    """A numeric header value, ``None`` when absent, empty or not a number."""
    try:
        value = ds.get(keyword)
    except Exception:  # malformed DS/IS values raise on access
        return None
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    if type(value).__name__ == "MultiValue":
        value = ",".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def parse_percent_glandular(comment: str | None) -> float | None:
    """Percent glandular tissue from CommentsOnRadiationDose, as vendors write it.

    Accepts e.g. ``"31 %"`` (GE), ``"%GLANDULAR=25"``, ``"Glandular Tissue: 40 %"``,
    ``"GLANDULARITY 12%"`` or a bare number; ``None`` when no value in 0-100 is found.
    """
    if not comment:
        return None
    text = str(comment)
    for pattern in (_GLANDULAR_KEYWORD, _PERCENT, _BARE_NUMBER):
        m = pattern.search(text)
        if m:
            value = float(m.group(1).replace(",", "."))
            return value if 0.0 <= value <= 100.0 else None
    return None


def _exposure_uas(ds: Dataset) -> float | None:
    value = _num(ds, "ExposureInuAs")
    if value is not None:
        return value
    current_ua = _num(ds, "XRayTubeCurrentInuA")
    time_us = _num(ds, "ExposureTimeInuS")
    time_ms = _num(ds, "ExposureTime")
    if current_ua is not None and time_us is not None:
        return current_ua * time_us / 1e6
    if current_ua is not None and time_ms is not None:
        return current_ua * time_ms / 1e3
    current_ma = _num(ds, "XRayTubeCurrent")
    if current_ma is not None and time_ms is not None:
        return current_ma * time_ms  # mA * ms = uAs
    mas = _num(ds, "Exposure")
    return mas * 1000.0 if mas is not None else None


def view_dose(ds: Dataset) -> ViewDose:
    """Dose figures of one image header (pixel data not needed)."""
    info = view_info(ds)
    organ_dgy = _num(ds, "OrganDose")
    entrance = _num(ds, "EntranceDoseInmGy")
    if entrance is None:
        entrance_dgy = _num(ds, "EntranceDose")
        # EntranceDose is IS in dGy; several vendors fill it with 0 next to the mGy value.
        entrance = entrance_dgy * 100.0 if entrance_dgy else None
    view = info.view
    if view is None:
        view = _text(ds, "ViewPosition")
    return ViewDose(
        laterality=info.laterality,
        view=view,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        agd_mgy=organ_dgy * 100.0 if organ_dgy is not None else None,
        entrance_dose_mgy=entrance,
        thickness_mm=_num(ds, "BodyPartThickness"),
        force_n=_num(ds, "CompressionForce"),
        kvp=_num(ds, "KVP"),
        exposure_uas=_exposure_uas(ds),
        anode=_text(ds, "AnodeTargetMaterial"),
        filter=_text(ds, "FilterMaterial"),
        exposure_control_mode=_text(ds, "ExposureControlMode"),
        percent_glandular=parse_percent_glandular(_text(ds, "CommentsOnRadiationDose")),
    )


def _exposure_key(ds: Dataset, vd: ViewDose) -> tuple:
    event = str(ds.get("IrradiationEventUID", "") or "")
    if event:
        return ("event", event)
    when = str(ds.get("AcquisitionDateTime", "") or "") or (
        str(ds.get("AcquisitionDate", "") or "") + str(ds.get("AcquisitionTime", "") or ""))
    if not when and vd.agd_mgy is None and vd.exposure_uas is None:
        return ("sop", vd.sop_instance_uid)  # nothing to tell exposures apart: keep each
    return ("exp", vd.laterality, vd.view, when, vd.agd_mgy, vd.kvp, vd.exposure_uas)


def _event_view(ev: RdsrEvent) -> ViewDose:
    return ViewDose(
        laterality=ev.laterality,
        view=ev.view,
        sop_instance_uid=ev.image_uids[0] if ev.image_uids else "",
        agd_mgy=ev.agd_mgy,
        entrance_dose_mgy=ev.entrance_mgy,
        thickness_mm=ev.thickness_mm,
        force_n=ev.force_n,
        kvp=ev.kvp,
        exposure_uas=ev.exposure_uas,
        anode=ev.anode,
        filter=ev.filter,
    )


def _same_exposure(ev: RdsrEvent, header_views: list[ViewDose]) -> ViewDose | None:
    """The one header view with the event's laterality, view, AGD (within 0.01 mGy) and
    thickness (within 0.5 mm): the For Presentation image of an event whose report
    references the For Processing one."""
    if ev.agd_mgy is None or ev.thickness_mm is None:
        return None
    hits = [v for v in header_views
            if v.laterality == ev.laterality and v.view == ev.view
            and v.agd_mgy is not None and abs(v.agd_mgy - ev.agd_mgy) <= 0.01
            and v.thickness_mm is not None and abs(v.thickness_mm - ev.thickness_mm) <= 0.5]
    return hits[0] if len(hits) == 1 else None


def _fill(target: ViewDose, source: ViewDose) -> ViewDose:
    """``target`` with its empty fields taken from ``source``."""
    data = target.model_dump()
    for key, value in source.model_dump().items():
        if data.get(key) in (None, "") and value not in (None, ""):
            data[key] = value
    return ViewDose(**data)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rounded_view(v: ViewDose) -> ViewDose:
    data = v.model_dump()
    for key, value in data.items():
        if isinstance(value, float):
            data[key] = round(value, 6)
    return ViewDose(**data)


def _select_reports(rdsr_datasets: Sequence[Dataset], study_uid: str | None,
                    missing: list[str]) -> list[RdsrReport]:
    reports: list[RdsrReport] = []
    for ds in rdsr_datasets:
        if not is_rdsr(ds):
            missing.append(f"not a dose report: SOP class {ds.get('SOPClassUID', '?')}")
            continue
        if study_uid and study_uid not in scope_study_uids(ds):
            log.info("dose report %s belongs to another study; ignored",
                     uid_hash(str(ds.get("SOPInstanceUID", ""))))
            continue
        try:
            reports.append(parse_rdsr(ds))
        except Exception as err:  # a malformed report must not fail the study
            log.warning("dose report %s unreadable: %s",
                        uid_hash(str(ds.get("SOPInstanceUID", ""))), err)
            missing.append("rdsr: unreadable dose report")
    return reports


def _accumulated(reports: list[RdsrReport], events: list[RdsrEvent]) -> dict[str, float]:
    """Accumulated AGD per breast as reported; with several reports, the one that covers
    every event (a later, cumulative report) wins; else the events are summed."""
    all_uids = {ev.event_uid for ev in events if ev.event_uid}
    candidates = [r for r in reports if r.accumulated_agd_mgy]
    for report in sorted(candidates, key=lambda r: len(r.events), reverse=True):
        uids = {ev.event_uid for ev in report.events if ev.event_uid}
        if len(reports) == 1 or (all_uids and all_uids <= uids):
            return dict(report.accumulated_agd_mgy)
    return {}


def extract_dose(image_datasets: Sequence[Dataset], rdsr_datasets: Sequence[Dataset] = (),
                 *, study_uid: str | None = None) -> DoseSummary:
    """Dose summary of one study.

    Parameters
    ----------
    image_datasets
        Headers of the study's images (pixel data not needed).
    rdsr_datasets
        Dose reports received with the study; only those of the same study count
        (StudyInstanceUID or the study named in the Scope of Accumulation).
    study_uid
        The study; default: the StudyInstanceUID of the first image (with no images, every
        report given counts).

    Returns
    -------
    DoseSummary
        Views (one per exposure), per breast accumulated AGD (``agd_source`` says from
        where), mean thickness and force, number of exposures, the exam total, the
        sources used and what was missing.
    """
    missing: list[str] = []
    if study_uid is None:
        for ds in image_datasets:
            if ds.get("StudyInstanceUID"):
                study_uid = str(ds.StudyInstanceUID)
                break

    # Image headers, one view per exposure.
    header_views: list[ViewDose] = []
    event_uid_of: dict[int, str] = {}
    seen: set[tuple] = set()
    for ds in image_datasets:
        if is_rdsr(ds):
            continue
        if is_quality_control(ds):
            log.info("image %s: quality-control image, not counted as an exposure",
                     uid_hash(str(ds.get("SOPInstanceUID", ""))))
            continue
        try:
            vd = view_dose(ds)
        except Exception as err:
            log.warning("image %s: dose header unreadable: %s",
                        uid_hash(str(ds.get("SOPInstanceUID", ""))), err)
            continue
        key = _exposure_key(ds, vd)
        if key in seen:
            continue
        seen.add(key)
        event_uid_of[len(header_views)] = str(ds.get("IrradiationEventUID", "") or "")
        header_views.append(vd)

    reports = _select_reports(rdsr_datasets, study_uid, missing)
    events: list[RdsrEvent] = []
    known: set[str] = set()
    for report in reports:
        for ev in report.events:
            if ev.event_uid and ev.event_uid in known:
                continue
            known.add(ev.event_uid)
            events.append(ev)

    sources: list[str] = []
    if events:
        sources.append("rdsr")
        by_sop = {vd.sop_instance_uid: vd for vd in header_views if vd.sop_instance_uid}
        by_event = {uid: header_views[i] for i, uid in event_uid_of.items() if uid}
        views = []
        used_headers = False
        for ev in events:
            vd = _event_view(ev)
            match = by_event.get(ev.event_uid) or next(
                (by_sop[u] for u in ev.image_uids if u in by_sop), None) or _same_exposure(
                ev, header_views)
            if match is not None:
                vd = _fill(vd, match)
                vd.sop_instance_uid = match.sop_instance_uid
                used_headers = True
            views.append(vd)
        if used_headers:
            sources.append("headers")
    else:
        views = header_views
        if header_views:
            sources.append("headers")
        if reports:
            sources.append("rdsr")
    if not reports:
        missing.append("rdsr: no dose report for this study")

    accumulated = _accumulated(reports, events)
    if reports and not accumulated:
        missing.append("rdsr: no accumulated AGD per breast (summed from events)")

    breasts: dict[str, BreastDose] = {}
    for side in ("R", "L"):
        side_views = [v for v in views if v.laterality == side]
        if not side_views and side not in accumulated:
            continue
        agds = [v.agd_mgy for v in side_views if v.agd_mgy is not None]
        if side in accumulated:
            agd, source = accumulated[side], "rdsr"
        elif agds:
            agd, source = sum(agds), ("rdsr" if events else "headers")
        else:
            agd, source = None, "none"
            missing.append(f"{side}: no AGD")
        thicknesses = [v.thickness_mm for v in side_views if v.thickness_mm is not None]
        forces = [v.force_n for v in side_views if v.force_n is not None]
        breasts[side] = BreastDose(
            agd_mgy=_round(agd),
            agd_source=source,
            mean_thickness_mm=_round(sum(thicknesses) / len(thicknesses), 2) if thicknesses
            else None,
            mean_force_n=_round(sum(forces) / len(forces), 2) if forces else None,
            exposures=len(side_views),
        )

    for i, v in enumerate(views):
        label = f"{v.laterality or '?'}-{v.view or '?'}" + (f"#{i + 1}" if len(views) > 1 else "")
        absent = [name for name in _KEY_FIELDS if getattr(v, name) is None]
        if absent:
            missing.append(f"{label}: " + ", ".join(absent))
    if not views:
        missing.append("no dose figures in any image header")
    unassigned = [v for v in views if v.laterality not in ("R", "L")]
    if unassigned:
        missing.append(f"{len(unassigned)} exposure(s) without laterality, not in any breast")

    agd_values = [b.agd_mgy for b in breasts.values() if b.agd_mgy is not None]
    return DoseSummary(
        views=[_rounded_view(v) for v in views],
        breasts=breasts,
        total_agd_mgy=_round(sum(agd_values)) if agd_values else None,
        sources=sources,
        missing=missing,
    )


def extract_dose_from_files(paths: Sequence[str | Path], *,
                            study_uid: str | None = None) -> DoseSummary:
    """:func:`extract_dose` on files: reads headers only, sorts images from dose reports
    by SOP class, skips files that cannot be read."""
    import pydicom

    images: list[Dataset] = []
    reports: list[Dataset] = []
    unreadable = 0
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:
            unreadable += 1
            log.warning("dose: cannot read %s: %s", Path(path).name, err)
            continue
        if is_rdsr(ds):
            reports.append(ds)  # no pixel data: the whole content tree was read
        elif not is_structured_report(str(ds.get("SOPClassUID", ""))):
            images.append(ds)
    summary = extract_dose(images, reports, study_uid=study_uid)
    if unreadable:
        summary.missing.append(f"{unreadable} file(s) unreadable")
    return summary


__all__ = ["extract_dose", "extract_dose_from_files", "parse_percent_glandular", "view_dose"]
