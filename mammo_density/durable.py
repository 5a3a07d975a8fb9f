"""Crash-safe file writes, shared by the spool, the SR outbox and the preparation cache.

A file only appears under its final name once its bytes and its directory entry are on
disk (write into a ``*.part`` file, ``fsync``, ``rename``, ``fsync`` of the directory): a
crash leaves either the whole file or a ``*.part`` leftover that the spool's start-up
clean-up removes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PART_SUFFIX = ".part"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) and make its entry durable."""
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)


def durable_write(final: Path, fill: Callable[[BinaryIO], object]) -> Path:
    """Write a file at ``final`` crash-safely: ``fill`` writes the bytes into a ``*.part``
    file beside it, which is fsync'd and renamed over ``final``, then the directory is
    fsync'd. A crash or an exception leaves ``final`` as it was (a ``*.part`` leftover at
    worst, removed by ``plugin.spool.clean_partials`` at start-up)."""
    directory = final.parent
    ensure_dir(directory)
    part = directory / f".{final.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
    try:
        with open(part, "wb") as dst:
            fill(dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(part, final)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return final
