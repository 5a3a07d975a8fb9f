"""Which image fills each screening slot, and the retake order.

The listener (plugin/assembly.py) and ``classify`` both call :func:`choose`, so they pick
the same images from the same files. Candidates are any objects with the attributes of
:class:`Candidate` (the listener's state rows, ``classify``'s file records).

Rules:

- only images the screening-image gate slotted (``slot`` set) take part;
- per slot, a For Presentation image is preferred; a For Processing image fills a slot
  only when that slot has no For Presentation image;
- retakes: the latest acquisition wins (:func:`acquisition_key`: AcquisitionDateTime,
  else AcquisitionDate + AcquisitionTime, else ContentDate + ContentTime), then the
  higher InstanceNumber, then the later arrival (``seq``).

Every candidate not chosen gets its reason (``retake_superseded`` or
``for_processing_superseded``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pydicom.dataset import Dataset

from mammo_density.study.reasons import Reason
from mammo_density.study.slots import SLOTS, is_complete, missing_slots


class Candidate(Protocol):
    """What selection needs to know of an image."""

    @property
    def slot(self) -> str | None: ...
    @property
    def for_presentation(self) -> bool: ...
    @property
    def acquired(self) -> str: ...
    @property
    def instance_number(self) -> int | None: ...
    @property
    def seq(self) -> int: ...


C = TypeVar("C", bound=Candidate)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _norm_datetime(date: str, time_: str) -> str:
    """``YYYYMMDDHHMMSS.ffffff`` (missing parts padded with zeros), or ``""``."""
    date = _digits(date)[:8]
    if len(date) != 8:
        return ""
    whole, _, frac = time_.strip().partition(".")
    whole = _digits(whole)[:6].ljust(6, "0")
    frac = _digits(frac)[:6].ljust(6, "0")
    return f"{date}{whole}.{frac}"


def acquisition_key(ds: Dataset) -> str:
    """When the image was acquired, as a sortable string (``""`` when unknown)."""
    dt = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if dt:
        body = dt.split("+")[0].split("-")[0]
        key = _norm_datetime(body[:8], body[8:])
        if key:
            return key
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"),
                             ("ContentDate", "ContentTime")):
        date = str(ds.get(date_kw, "") or "")
        if date:
            key = _norm_datetime(date, str(ds.get(time_kw, "") or ""))
            if key:
                return key
    return ""


def retake_order(c: Candidate) -> tuple[str, int, int]:
    """Sort key of retakes of one slot: the largest wins."""
    return (c.acquired, c.instance_number if c.instance_number is not None else -1, c.seq)


@dataclass
class Choice(Generic[C]):
    """The image chosen per slot, and why each other slotted candidate was not."""

    images: dict[str, C] = field(default_factory=dict)
    passed_over: list[tuple[C, Reason]] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return missing_slots(self.images)

    @property
    def complete(self) -> bool:
        """Every slot holds a For Presentation image."""
        return is_complete({s: c.for_presentation for s, c in self.images.items()})


def choose(candidates: Iterable[C]) -> Choice[C]:
    """One image per slot from ``candidates`` (see the module docstring)."""
    by_slot: dict[str, list[C]] = {}
    for c in candidates:
        if c.slot in SLOTS:
            by_slot.setdefault(c.slot, []).append(c)
    out: Choice[C] = Choice()
    for slot in SLOTS:
        options = by_slot.get(slot, [])
        if not options:
            continue
        preferred = [c for c in options if c.for_presentation] or options
        chosen = max(preferred, key=retake_order)
        out.images[slot] = chosen
        for c in options:
            if c is chosen:
                continue
            out.passed_over.append((c, Reason.RETAKE_SUPERSEDED
                                    if c.for_presentation == chosen.for_presentation
                                    else Reason.FOR_PROCESSING_SUPERSEDED))
    return out


__all__ = ["Candidate", "Choice", "acquisition_key", "choose", "retake_order"]
