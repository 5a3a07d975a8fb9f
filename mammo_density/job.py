"""The hand-over from the listener to the pipeline: one study ready to be assessed.

The listener (plugin/) builds a :class:`StudyJob` and calls the ``submit`` callable it was
given; the pipeline (worker/, in-process or through Celery) consumes it. It carries UIDs
only: no file paths, no pixel data. The pipeline finds each image's file through the
:class:`~mammo_density.spool_layout.ImageSource` its composition root gave it (for
``serve`` and ``worker``: its own spool, nothing outside it), so a job on the broker
cannot name a file for a worker to read. A field a job does not define (``path`` in a
job from an older version, say) is ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from mammo_density.result import UnusedImage
from mammo_density.study.slots import SLOTS


class JobImage(BaseModel):
    """One spooled image chosen for a screening slot."""

    slot: str = Field(description="R-CC, L-CC, R-MLO or L-MLO")
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
    other_sop_uids
        SOP Instance UIDs of every other spooled instance of the study: extra views,
        For Processing twins, X-Ray Radiation Dose SRs (read for the dose figures).
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
    other_sop_uids: list[str] = Field(default_factory=list)
    partial: bool = False
    missing_views: list[str] = Field(default_factory=list)
    unused_images: list[UnusedImage] = Field(default_factory=list)
    calling_aet: str = ""
    peer_host: str = ""
    source: Literal["listener", "files"] = "listener"

    def image_for(self, slot: str) -> JobImage | None:
        return next((im for im in self.images if im.slot == slot), None)

    @property
    def all_sop_uids(self) -> list[str]:
        return [im.sop_instance_uid for im in self.images] + list(self.other_sop_uids)


__all__ = ["SLOTS", "JobImage", "StudyJob"]
