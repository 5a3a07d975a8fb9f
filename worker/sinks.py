"""What the pipeline writes to, as plain interfaces: its composition root decides.

The pipeline (:mod:`mammo_density.worker.pipeline`) never builds its own state database,
outbox or hook queue. ``serve``, ``worker`` and ``classify`` (``mammo_density/commands``)
construct them and hand them in; any object with these methods will do (the listener's
``StateDB`` and ``Outbox`` fit without inheriting from anything). A sink that is
``None`` is simply not written: ``classify`` has no state database and no hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from mammo_density.result import StudyResult


class StudyStates(Protocol):
    """Where a study's progress is recorded (``plugin.state.StateDB`` on the node)."""

    def mark_processing(self, study_uid: str, revision: int, *,
                        stale_after: float = 60.0, owner: str = "") -> bool:
        """Claim the revision; False when another submission holds a claim younger than
        ``stale_after`` seconds (a claim of the same non-empty ``owner`` is taken again),
        or the revision is finished or superseded."""
        ...

    def mark_done(self, study_uid: str, revision: int, result_json: str) -> None: ...

    def mark_failed(self, study_uid: str, revision: int, reason: str) -> None: ...

    def study(self, study_uid: str) -> Mapping[str, Any] | None:
        """The study's row (``status``, ``result_revision``), or None."""
        ...


class SROutbox(Protocol):
    """Where a finished SR goes (``plugin.outbox.Outbox`` on the node; a folder for
    ``classify --sr-out``). Returns the path the SR was written to."""

    def enqueue(self, sr: Dataset, *, study_uid: str, calling_aet: str = "",
                peer_host: str = "") -> Path: ...


class ResultHooks(Protocol):
    """Who hears about each result (the screening-programme hook queue on the node)."""

    def dispatch(self, result: StudyResult) -> None: ...


class QueuedHooks:
    """:class:`ResultHooks` over :func:`mammo_density.worker.hooks.dispatch`: the result
    is queued in the data directory for every hook the settings activate; with
    ``route=False`` (a Celery worker) it is held for ``serve`` to route."""

    def __init__(self, settings: Any, *, route: bool = True) -> None:
        self.settings = settings
        self.route = route

    def dispatch(self, result: StudyResult) -> None:
        from mammo_density.worker.hooks import dispatch

        dispatch(result, self.settings, route=self.route)


class FolderSRs:
    """:class:`SROutbox` that writes each SR into a folder (``classify --sr-out``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def enqueue(self, sr: Dataset, *, study_uid: str, calling_aet: str = "",
                peer_host: str = "") -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{sr.SOPInstanceUID}.dcm"
        sr.save_as(path, enforce_file_format=True)
        return path


__all__ = ["FolderSRs", "QueuedHooks", "ResultHooks", "SROutbox", "StudyStates"]
