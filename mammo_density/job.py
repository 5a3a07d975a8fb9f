"""The hand-over from the listener to the pipeline: one study ready to be assessed.

The listener (plugin/) builds a :class:`StudyJob` and calls the ``submit`` callable it was
given; the pipeline (worker/, in-process or through Celery) consumes it. It carries paths
and UIDs only, never pixel data, so it travels cheaply as JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from mammo_density.result import UnusedImage
from mammo_density.study.slots import SLOTS


class JobImage(BaseModel):
    """One spooled image chosen for a screening slot."""

    slot: str = Field(description="R-CC, L-CC, R-MLO or L-MLO")
    path: str = Field(description="absolute path of the spooled DICOM file")
    sop_instance_uid: str
    sop_class_uid: str = ""


class StudyJob(BaseModel):
    """A study the listener hands to the pipeline.

    Attributes
    ----------
    study_instance_uid
        The study's UID.
    revision
        Increases each time the study is queued again (new images after a result):
        the newest revision's result supersedes older ones.
    images
        The images filling the screening slots (at most one per slot).
    other_paths
        Every other spooled instance of the study: extra views, For Processing twins,
        X-Ray Radiation Dose SRs (read by the dose hooks).
    partial
        True when queued after the stable timeout with a slot empty.
    missing_views
        Slots without an image.
    unused_images
        Every image of the study not chosen for a slot, with the reason
        (:mod:`mammo_density.study.gate`, :mod:`mammo_density.study.selection`).
    calling_aet, peer_host
        Who sent the study (for "back to the caller" SR delivery).
    source
        ``listener`` (received over the network; partial means the stable timeout
        passed) or ``files`` (``classify``, offline; partial means views absent).
    """

    study_instance_uid: str
    revision: int = 1
    images: list[JobImage]
    other_paths: list[str] = Field(default_factory=list)
    partial: bool = False
    missing_views: list[str] = Field(default_factory=list)
    unused_images: list[UnusedImage] = Field(default_factory=list)
    calling_aet: str = ""
    peer_host: str = ""
    source: Literal["listener", "files"] = "listener"

    def image_for(self, slot: str) -> JobImage | None:
        return next((im for im in self.images if im.slot == slot), None)

    @property
    def all_paths(self) -> list[str]:
        return [im.path for im in self.images] + list(self.other_paths)


__all__ = ["SLOTS", "JobImage", "StudyJob"]
