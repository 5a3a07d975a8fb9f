"""The durable spool: one DICOM file per received instance, written crash-safely.

Layout: ``<spool>/<study>/<instance>.dcm`` where ``<study>`` and ``<instance>`` are the
UIDs themselves when they are well-formed DICOM UIDs, else ``x`` + a SHA-256 prefix (so a
hostile UID can never walk out of the spool); the rule lives in
:mod:`mammo_density.spool_layout`, which the pipeline uses to find images. A file
only appears under its final name once its bytes and its directory entry are on disk
(write or link, ``fsync``, ``rename``, ``fsync`` of the directory): a crash leaves
either the whole file or nothing but a ``*.part`` leftover, which
:func:`clean_partials` removes at start-up.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from mammo_density.durable import PART_SUFFIX, durable_write, fsync_dir
from mammo_density.durable import ensure_dir as _ensure_dir
from mammo_density.spool_layout import instance_path, safe_name

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def free_mb(path: Path) -> float:
    """Free space (MiB) on the file system holding ``path`` (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free / (1024 * 1024)




def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def commit_file(received: Path, final: Path, *, move: bool) -> Path:
    """Put a completely received file at ``final`` durably and atomically.

    Parameters
    ----------
    received
        The file as received (preamble, file meta, data set).
    final
        Its spool path; an existing file there (the same SOP Instance UID sent again) is
        replaced atomically.
    move
        Try to rename ``received`` into place (no second copy of the bytes) when it is on
        the same file system; otherwise, or when the rename fails, copy it.

    Returns
    -------
    Path
        ``final``.
    """
    directory = final.parent
    _ensure_dir(directory)
    if move:
        try:
            _fsync_file(received)
            os.replace(received, final)
            fsync_dir(directory)
            return final
        except OSError as err:  # EXDEV (other file system) or the like: copy instead
            log.debug("rename into the spool failed (%s); copying", err.strerror)

    def copy(dst: BinaryIO) -> None:
        with open(received, "rb") as src:
            shutil.copyfileobj(src, dst, CHUNK)

    return durable_write(final, copy)




def clean_partials(spool_dir: Path) -> int:
    """Remove ``*.part`` leftovers of writes cut short by a crash; return how many."""
    removed = 0
    if not spool_dir.is_dir():
        return 0
    for leftover in spool_dir.glob(f"*/.*{PART_SUFFIX}"):
        leftover.unlink(missing_ok=True)
        removed += 1
    incoming = spool_dir / ".incoming"
    if incoming.is_dir():
        for leftover in incoming.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


def spooled_files(spool_dir: Path) -> list[Path]:
    """Every committed instance file in the spool."""
    if not spool_dir.is_dir():
        return []
    return sorted(p for p in spool_dir.glob("*/*.dcm") if not p.name.startswith("."))


__all__ = [
    "clean_partials",
    "commit_file",
    "durable_write",
    "free_mb",
    "fsync_dir",
    "instance_path",
    "safe_name",
    "spooled_files",
]
