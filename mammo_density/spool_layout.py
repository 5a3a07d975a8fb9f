"""Where a spooled instance lives, and how the pipeline finds a study's images.

The listener (``plugin/spool.py``) writes each received instance at
``<spool>/<study>/<instance>.dcm``; the pipeline only ever gets UIDs (a
:class:`~mammo_density.job.StudyJob` carries no file paths) and turns them into files
through an :class:`ImageSource` handed to it by its composition root:

- :class:`SpoolImages` (``serve``, ``worker``): the file of a UID pair inside one spool
  folder, nothing else. A name that resolves outside the spool (a symbolic link planted
  there, say) is refused with :class:`NotInSpool`, so a task on the broker cannot make
  a worker read an arbitrary file.
- :class:`FileImages` (``classify``): the files the operator named on the command line,
  looked up by SOP Instance UID.

Both are core (no listener or worker import), so the layout rule has one home.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NotInSpool(LookupError):
    """The image named by a job is not a file of the source (or lies outside it)."""


def safe_name(uid: str) -> str:
    """A file-system-safe name for a UID: the UID itself if well-formed, else a hash."""
    uid = (uid or "").strip().rstrip("\x00")
    if _UID_RE.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance_path(spool_dir: Path, study_uid: str, sop_uid: str) -> Path:
    """Final spool path of one instance."""
    return Path(spool_dir) / safe_name(study_uid) / (safe_name(sop_uid) + ".dcm")


class ImageSource(Protocol):
    """Turns (study UID, SOP Instance UID) into a readable file, or raises
    :class:`NotInSpool`."""

    def locate(self, study_uid: str, sop_uid: str) -> Path: ...


class SpoolImages:
    """Images of one spool folder, and only those.

    Parameters
    ----------
    spool_dir
        The spool (``settings.spool_dir``). It need not exist yet.
    """

    def __init__(self, spool_dir: Path | str) -> None:
        self.spool_dir = Path(spool_dir)

    def locate(self, study_uid: str, sop_uid: str) -> Path:
        path = instance_path(self.spool_dir, study_uid, sop_uid)
        try:
            real = path.resolve(strict=True)
            root = self.spool_dir.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotInSpool("not in the spool") from None
        if not real.is_relative_to(root) or real.parent.parent != root:
            raise NotInSpool("refused: the spool entry points outside the spool")
        return real


class FileImages:
    """Files named by the operator (``classify``), by SOP Instance UID.

    Parameters
    ----------
    files
        ``{sop_instance_uid: path}``.
    """

    def __init__(self, files: Mapping[str, str | Path]) -> None:
        self.files = {uid: Path(p) for uid, p in files.items()}

    def locate(self, study_uid: str, sop_uid: str) -> Path:
        try:
            return self.files[sop_uid]
        except KeyError:
            raise NotInSpool("not among the files given") from None


__all__ = ["FileImages", "ImageSource", "NotInSpool", "SpoolImages", "instance_path",
           "safe_name"]
