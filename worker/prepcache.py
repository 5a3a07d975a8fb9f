"""Model inputs prepared as each image arrives, cached beside the spool.

When an image is spooled, :func:`notify` hands it to the process's :class:`Preparer`
(started by ``serve`` on the embedded pipeline when ``prepare_on_arrival`` is on: with
Celery the worker started on the study before serve had prepared most images, and decoded
them again, which made it slower), whose background threads read
it, decodes at reduced resolution, orients, crops and resizes it for every input size the
installed models need (:func:`~mammo_density.worker.preprocess.preprocess_dataset`, the
same code as the pipeline) and writes one cache entry per size beside the spooled file::

    <spool>/<study>/<sop>.dcm
    <spool>/<study>/<sop>.<preprocessing version>.<size>.prep

When the study is complete, :meth:`Pipeline.prepare` takes the entries it finds
(:func:`lookup`; it waits for an image still being prepared instead of doing it twice)
and prepares the rest itself, so only inference, rules and reporting remain. A Celery
worker whose spool is the same local folder reads the entries it finds (the same
:meth:`Pipeline.prepare`).

Invalidation: the key is the SOP instance (file name), the preprocessing version and the
input size; the entry also records the spooled file's size, modification time and inode
as read when it was prepared, and a CRC of the array. A file received again under the
same SOP Instance UID (replaced atomically in the spool) no longer matches: the entry is
ignored and removed, and the new file is prepared again. Late images and retakes with new
UIDs get their own entries; those of the images already there stay valid. Entries are
written with the spool's durable-write helper (part file, fsync, rename), so a crash
leaves either a whole entry or a ``*.part`` leftover that start-up removes; an entry
that cannot be read back for any reason is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammo_density.durable import durable_write
from mammo_density.worker.preprocess import PREPROCESSING_VERSION

log = logging.getLogger(__name__)

SUFFIX = ".prep"
MAGIC = b"MDPREP1\n"


@dataclass
class Entry:
    """One cached model input and what preprocessing said about it."""

    array: np.ndarray
    warnings: list[str] = field(default_factory=list)
    quality: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def cache_path(dcm_path: Path | str, size: int, version: str = PREPROCESSING_VERSION) -> Path:
    """Where the entry of ``dcm_path`` at ``size`` lives (beside it, same folder)."""
    p = Path(dcm_path)
    return p.with_name(f"{p.stem}.{version}.{int(size)}{SUFFIX}")


def _source(st: os.stat_result) -> list[int]:
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)]


def write_entry(dcm_path: Path | str, size: int, entry: Entry, source: os.stat_result,
                version: str = PREPROCESSING_VERSION) -> Path:
    """Write ``entry`` durably (:func:`mammo_density.durable.durable_write`) and return its
    path."""

    arr = np.ascontiguousarray(entry.array, dtype="<f4")
    data = arr.tobytes()
    header = json.dumps({
        "version": version, "size": int(size), "shape": list(arr.shape),
        "source": _source(source), "crc32": zlib.crc32(data), "warnings": entry.warnings,
        "quality": entry.quality, "timings_ms": entry.timings_ms}).encode()

    def fill(fh) -> None:
        fh.write(MAGIC + len(header).to_bytes(4, "little") + header)
        fh.write(data)

    return durable_write(cache_path(dcm_path, size, version), fill)


def read_entry(dcm_path: Path | str, size: int,
               version: str = PREPROCESSING_VERSION) -> Entry | None:
    """The valid entry of ``dcm_path`` at ``size``, else None (a stale one is removed)."""
    path = cache_path(dcm_path, size, version)
    try:
        raw = path.read_bytes()
        st = os.stat(dcm_path)
    except OSError:
        return None
    try:
        if not raw.startswith(MAGIC):
            raise ValueError("not a cache entry")
        n = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 4], "little")
        start = len(MAGIC) + 4
        header = json.loads(raw[start:start + n])
        data = raw[start + n:]
        if header["version"] != version or header["size"] != int(size):
            raise ValueError("other version or size")
        if header["source"] != _source(st):
            raise ValueError("the spooled file changed since it was prepared")
        if zlib.crc32(data) != header["crc32"]:
            raise ValueError("CRC mismatch")
        shape = tuple(header["shape"])
        arr = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
    except Exception as err:
        log.debug("cache entry %s not used: %s", path.name, err)
        path.unlink(missing_ok=True)
        return None
    return Entry(array=arr, warnings=list(header.get("warnings", [])),
                 quality=header.get("quality"), timings_ms=dict(header.get("timings_ms", {})))


def prepare_file(dcm_path: Path | str, sizes: Sequence[int], *, reduced: bool = True,
                 threads: int = 1,
                 ready: Callable[[list[int], dict[int, Entry]], None] | None = None
                 ) -> dict[int, Entry]:
    """Prepare one spooled image for every size and cache it; the entries written.

    The file's identity is taken from the open file (``fstat``), so a file replaced while
    this runs leaves entries that no longer match it (ignored later), never wrong ones.
    ``ready(source, entries)`` is called once the entries are computed, before the
    (fsync'd) writes. Raises what reading or preprocessing raises (the pipeline reports it
    at study time).
    """
    import pydicom

    from mammo_density.worker.preprocess import preprocess_dataset
    from mammo_density.worker.quality import view_quality

    out: dict[int, Entry] = {}
    with open(dcm_path, "rb") as fh:
        st = os.fstat(fh.fileno())
        ds = pydicom.dcmread(fh)
    for size in sizes:
        t0 = time.perf_counter()
        arr, info = preprocess_dataset(ds, size, threads=threads, reduced=reduced)
        timings = dict(info.timings_ms)
        timings["prepare_on_arrival"] = (time.perf_counter() - t0) * 1000.0
        out[int(size)] = Entry(array=arr, warnings=list(info.warnings),
                               quality=view_quality(info).model_dump(mode="json"),
                               timings_ms=timings)
    if ready is not None:
        ready(_source(st), out)
    for size, entry in out.items():
        write_entry(dcm_path, size, entry, st)
    return out


def _lower_priority() -> None:
    """Run this thread at nice 10 (Linux: per thread), so that receiving the rest of the
    study, and assessing a complete one, go first on a machine with few cores."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Preparer:
    """Background threads preparing spooled images in arrival order.

    Results are also kept in memory (the last few images) from the moment they are
    computed, so a study that completes does not wait for the cache writes. When the
    pipeline asks for an image whose preparation has not started yet, that job is
    cancelled and the pipeline prepares the image itself, in parallel with the others.

    Parameters
    ----------
    sizes
        Returns the input sizes the installed models need (called once, lazily).
    reduced
        Reduced-resolution JPEG 2000 decode (as the pipeline's default).
    threads
        Codec threads per image.
    workers
        Images prepared at the same time (default: as the pipeline decodes, <= 2 here).
    """

    MEMORY = 8  # images kept in memory after preparation (~1.7 MB each at 650 px)

    def __init__(self, sizes: Callable[[], Sequence[int]], *, reduced: bool = True,
                 threads: int = 1, workers: int | None = None) -> None:
        self._sizes_fn = sizes
        self._sizes: list[int] | None = None
        self.reduced = reduced
        self.threads = threads
        workers = workers or max(1, min(2, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="md-prepare",
                                        initializer=_lower_priority)
        self._pending: dict[str, Future] = {}
        self._memory: dict[str, tuple[list[int], dict[int, Entry]]] = {}
        self._lock = threading.Lock()
        self.prepared = 0
        self.failed = 0
        self.cancelled = 0

    def sizes(self) -> list[int]:
        if self._sizes is None:
            self._sizes = [int(s) for s in self._sizes_fn()]
        return self._sizes

    def submit(self, dcm_path: Path | str) -> Future:
        """Queue one spooled image (a second submit of the same path queues it again:
        the file may have been replaced)."""
        key = str(dcm_path)
        future = self._pool.submit(self._run, key)
        with self._lock:
            self._pending[key] = future
        future.add_done_callback(lambda f, k=key: self._done(k, f))
        return future

    def _done(self, key: str, future: Future) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def _remember(self, key: str, source: list[int], entries: dict[int, Entry]) -> None:
        with self._lock:
            self._memory.pop(key, None)
            self._memory[key] = (source, entries)
            while len(self._memory) > self.MEMORY:
                self._memory.pop(next(iter(self._memory)))

    def _run(self, key: str) -> None:
        try:
            prepare_file(key, self.sizes(), reduced=self.reduced, threads=self.threads,
                         ready=lambda src, entries: self._remember(key, src, entries))
            self.prepared += 1
        except Exception as err:  # the pipeline meets the same error and reports it
            self.failed += 1
            log.debug("prepare on arrival of %s failed: %s", Path(key).name,
                      type(err).__name__)

    def take(self, dcm_path: Path | str, timeout: float | None = 60.0
             ) -> dict[int, Entry] | None:
        """The image's entries from memory, waiting for a preparation that is running;
        one not started yet is cancelled (None: the caller prepares it)."""
        key = str(dcm_path)
        with self._lock:
            future = self._pending.get(key)
        if future is not None:
            if future.cancel():
                self.cancelled += 1
                return None
            # on a timeout or an error the caller prepares the image itself
            with contextlib.suppress(Exception):
                deadline = time.monotonic() + (timeout or 0)
                while key not in self._memory and not future.done():
                    if timeout is not None and time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
        with self._lock:
            held = self._memory.pop(key, None)
        if held is None:
            return None
        source, entries = held
        try:
            if _source(os.stat(dcm_path)) != source:
                return None
        except OSError:
            return None
        return entries

    def wait(self, dcm_path: Path | str, timeout: float | None = 60.0) -> None:
        """Until the image's queued preparation (if any) has finished, cache written."""
        with self._lock:
            future = self._pending.get(str(dcm_path))
        if future is not None:
            with contextlib.suppress(Exception):
                future.result(timeout=timeout)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


_active: Preparer | None = None
_unhook: Callable[[], None] | None = None


Subscribe = Callable[[Callable[[Path], None]], Callable[[], None]]
"""How the composition root feeds a Preparer: ``subscribe(callback)`` calls ``callback(path)``
for every slotted screening image once it is durable in the spool, and returns the function
that ends the subscription (``serve`` wires it to the listener's ``on_spooled``)."""


def start(preparer: Preparer, subscribe: Subscribe | None = None) -> Preparer:
    """Make ``preparer`` the one :func:`notify` and :func:`lookup` use in this process and,
    with ``subscribe``, feed it every slotted image the listener spools."""
    global _active, _unhook
    stop()
    _active = preparer
    if subscribe is not None:
        _unhook = subscribe(notify)
    return preparer


def start_for(settings: Any, subscribe: Subscribe | None = None) -> Preparer | None:
    """Start a Preparer for the node's models when ``settings.prepare_on_arrival``."""
    if not getattr(settings, "prepare_on_arrival", False):
        return None
    from mammo_density.worker.pipeline import Pipeline

    pipeline = Pipeline(settings)  # reads the manifests only, no ONNX session
    return start(Preparer(pipeline.input_sizes), subscribe)


def stop(wait: bool = True) -> None:
    global _active, _unhook
    preparer, _active = _active, None
    if _unhook is not None:
        _unhook()
        _unhook = None
    if preparer is not None:
        preparer.close(wait=wait)


def notify(dcm_path: Path | str) -> None:
    """An image was spooled: prepare it in the background when a Preparer is running."""
    preparer = _active
    if preparer is not None:
        with contextlib.suppress(RuntimeError):  # shutting down
            preparer.submit(dcm_path)


def lookup(dcm_path: Path | str, sizes: Sequence[int]) -> dict[int, Entry] | None:
    """Every size's entry of ``dcm_path``, or None when one is missing or stale: from this
    process's Preparer (waiting for a preparation of the image that is running, taking
    over one not started) or from the cache beside the spool."""
    preparer = _active
    if preparer is not None:
        held = preparer.take(dcm_path)
        if held is not None and all(int(s) in held for s in sizes):
            return {int(s): held[int(s)] for s in sizes}
    out: dict[int, Entry] = {}
    for size in sizes:
        entry = read_entry(dcm_path, size)
        if entry is None:
            return None
        out[int(size)] = entry
    return out


__all__ = ["Entry", "Preparer", "cache_path", "lookup", "notify", "prepare_file",
           "read_entry", "start", "start_for", "stop", "write_entry"]
