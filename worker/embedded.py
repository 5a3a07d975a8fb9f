"""In-process pipeline: what ``serve`` uses when no broker is configured.

The same stages as the Celery tasks (:meth:`Pipeline.run`: prepare -> infer -> decide ->
report) in a small thread pool (``settings.embedded_workers`` threads): the decoders and
ONNX Runtime release the GIL, and the listener's ``submit`` returns at once. One Pipeline
(one set of ONNX sessions), built with its sinks by ``serve``, is shared by the threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from mammo_density.job import StudyJob
from mammo_density.logsetup import uid_hash
from mammo_density.result import StudyResult
from mammo_density.worker.pipeline import Pipeline

log = logging.getLogger(__name__)


class EmbeddedRunner:
    """Run studies through :meth:`Pipeline.run` in a thread pool.

    Parameters
    ----------
    pipeline
        The pipeline, with its sinks (built by the composition root).
    workers
        Studies assessed at once (threads); default ``settings.embedded_workers``.
    on_done
        Called with each study's result (from the worker thread); exceptions it raises
        are logged.
    """

    def __init__(self, pipeline: Pipeline, *, workers: int | None = None,
                 on_done: Callable[[StudyResult], object] | None = None) -> None:
        self.pipeline = pipeline
        self.on_done = on_done
        workers = workers or pipeline.settings.embedded_workers
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="md-pipeline")
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, int], Future] = {}
        self._closed = False

    def submit(self, job: StudyJob) -> None:
        """Queue ``job``; returns at once. A revision already queued is not queued twice."""
        key = (job.study_instance_uid, job.revision)
        with self._lock:
            if self._closed:
                raise RuntimeError("EmbeddedRunner is closed")
            if key in self._in_flight:
                log.info("study %s revision %d already queued", uid_hash(key[0]), key[1])
                return
            future = self._pool.submit(self._run, job)
            self._in_flight[key] = future
        future.add_done_callback(lambda _f, key=key: self._forget(key))

    def _forget(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._in_flight.pop(key, None)

    def _run(self, job: StudyJob) -> StudyResult | None:
        try:
            result = self.pipeline.run(job)
        except Exception:
            log.exception("study %s revision %d: pipeline failed",
                          uid_hash(job.study_instance_uid), job.revision)
            return None
        if self.on_done is not None:
            try:
                self.on_done(result)
            except Exception:
                log.exception("on_done callback failed")
        return result

    @property
    def pending(self) -> int:
        """Studies queued or running."""
        with self._lock:
            return len(self._in_flight)

    def close(self, wait: bool = True) -> None:
        """Stop accepting studies; with ``wait``, finish the queued ones first."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> EmbeddedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=True)


__all__ = ["EmbeddedRunner"]
