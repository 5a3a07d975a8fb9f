"""Celery tasks: thin wrappers around :class:`~mammo_density.worker.pipeline.Pipeline`.

A study travels as a chain of three tasks so that CPU and GPU work can live on
different hosts::

    preprocess(job)            queue "cpu": state -> processing; read + decode +
                               preprocess from the spool; returns the model-ready arrays
                               (16-bit fixed point, zlib, base64: ~30-60 KB per 4-view
                               study at 64-256 px; see benchmarks/README.md)
      -> infer(prepared)       queue "gpu": ONNX per view; returns the probabilities
      -> report(data, job)     queue "cpu": rules, result, dose, screening rules,
                               SR -> outbox, hooks, state -> done / failed

``process_study(job)`` runs the whole :meth:`Pipeline.run` in one task (same code as the
embedded runner). Tasks take a JSON StudyJob (paths and UIDs), are idempotent and skip a
study revision the state database already shows done. Retries are declarative and only
for transient errors (a busy SQLite database, a lost connection); a bad study is never
retried: the pipeline records it as failed with the reason.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any

from celery import Celery, chain
from celery.exceptions import SoftTimeLimitExceeded

from mammo_density.config import Settings
from mammo_density.job import StudyJob
from mammo_density.logsetup import uid_hash
from mammo_density.worker.models import ModelError
from mammo_density.worker.pipeline import Inferred, Pipeline, Prepared

log = logging.getLogger(__name__)


class TransientError(RuntimeError):
    """A failure worth retrying (the same task may succeed a little later)."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError, ConnectionError, TimeoutError, sqlite3.OperationalError)

RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,  # below the visibility timeout: countdowns stay in Redis
    "retry_jitter": True,
    "max_retries": 5,
}

_settings: Settings | None = None
_pipeline: Pipeline | None = None
_pipeline_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Settings used by this process's tasks (the pipeline is created lazily)."""
    global _settings, _pipeline
    _settings = settings
    _pipeline = None


def get_pipeline() -> Pipeline:
    """This process's Pipeline: models loaded once per worker process, on first use."""
    global _pipeline
    if _pipeline is None:
        with _pipeline_lock:
            if _pipeline is None:
                if _settings is None:
                    raise RuntimeError("tasks.configure(settings) was not called")
                _pipeline = Pipeline(_settings)
    return _pipeline


def reset_after_fork() -> None:
    """Drop a pipeline inherited from a parent process (ONNX sessions do not fork)."""
    global _pipeline
    _pipeline = None


def _already_done(pipeline: Pipeline, job: StudyJob) -> bool:
    try:
        row = pipeline.state.study(job.study_instance_uid)
    except sqlite3.OperationalError:
        raise
    except Exception:
        return False
    return bool(row and row.get("status") == "done"
                and int(row.get("result_revision") or 0) >= job.revision)


def _claim(pipeline: Pipeline, job: StudyJob) -> bool:
    """Claim the revision in the state database (False: another copy of this task, e.g.
    one re-submitted by the listener's sweep for a lost message, is already on it)."""
    try:
        return bool(pipeline.state.mark_processing(
            job.study_instance_uid, job.revision,
            # a claim older than the task's hard time limit is held by a dead task: its
            # message is the one redelivered now (after the visibility timeout)
            stale_after=_settings.task_time_limit if _settings else 60.0))
    except sqlite3.OperationalError:
        raise
    except Exception:
        log.exception("study %s: claim failed; going on", uid_hash(job.study_instance_uid))
        return True


def _skipped(job: StudyJob) -> dict[str, Any]:
    log.info("study %s revision %d already done: skipped", uid_hash(job.study_instance_uid),
             job.revision)
    return {"skipped": True, "study_instance_uid": job.study_instance_uid,
            "revision": job.revision}


def _failed(pipeline: Pipeline, job: StudyJob, reason: str) -> dict[str, Any]:
    """Record a study as failed (poison, time limit, model unavailable): not retried."""
    log.error("study %s revision %d failed: %s", uid_hash(job.study_instance_uid),
              job.revision, reason)
    pipeline.record_state("mark_failed", job, reason)
    return {"skipped": True, "failed": reason, "study_instance_uid": job.study_instance_uid,
            "revision": job.revision}


def _reason(stage: str, err: BaseException) -> str:
    if isinstance(err, ModelError):
        return f"model unavailable: {err}"
    if isinstance(err, SoftTimeLimitExceeded):
        return f"{stage}: time limit exceeded"
    return f"{stage} failed: {type(err).__name__}: {err}"


# --- task bodies (plain functions; tests may call them directly) --------------------------

def preprocess(job_json: dict[str, Any]) -> dict[str, Any]:
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    if _already_done(pipeline, job) or not _claim(pipeline, job):
        return _skipped(job)
    try:
        prepared = pipeline.prepare(job)
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("preprocessing", err))
    return prepared.to_payload()


def infer(payload: dict[str, Any]) -> dict[str, Any]:
    """GPU side: touches neither the spool nor the state (another host may run it); a
    failure travels on to ``report``, which records it."""
    if payload.get("skipped"):
        return payload
    meta = dict(payload)
    meta["arrays"] = {}
    try:
        pipeline = get_pipeline()
        inferred = pipeline.infer(Prepared.from_payload(payload))
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        log.error("inference failed: %s", _reason("inference", err))
        return {"prepared": meta, "inferred": None, "error": _reason("inference", err)}
    return {"prepared": meta, "inferred": inferred.to_payload()}


def report(data: dict[str, Any], job_json: dict[str, Any]) -> dict[str, Any]:
    if data.get("skipped"):
        return data
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    if data.get("error"):
        return _failed(pipeline, job, str(data["error"]))
    try:
        prepared = Prepared.from_payload(data["prepared"])
        inferred = Inferred.from_payload(data["inferred"])
        result = pipeline.complete(job, prepared, inferred)
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("report", err))
    log.info("study %s revision %d: %s", uid_hash(job.study_instance_uid), job.revision,
             result.exam.category if result.exam else "not assessable")
    return result.model_dump(mode="json")


def process_study(job_json: dict[str, Any]) -> dict[str, Any]:
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    if _already_done(pipeline, job) or not _claim(pipeline, job):
        return _skipped(job)
    try:
        return pipeline.run(job).model_dump(mode="json")
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("pipeline", err))


def register(app: Celery, settings: Settings) -> None:
    """Register the tasks on ``app`` and remember ``settings`` for this process."""
    configure(settings)
    for fn in (preprocess, infer, report, process_study):
        app.task(name=f"mammo_density.{fn.__name__}", **RETRY_OPTIONS)(fn)


def signature_for(job: StudyJob, app: Celery):
    """The preprocess -> infer -> report chain of one study."""
    job_json = job.model_dump(mode="json")
    key = f"md-{uid_hash(job.study_instance_uid)}-r{job.revision}"  # idempotent task ids
    return chain(app.signature("mammo_density.preprocess", args=(job_json,),
                               task_id=f"{key}-preprocess"),
                 app.signature("mammo_density.infer", task_id=f"{key}-infer"),
                 app.signature("mammo_density.report", args=(job_json,),
                               task_id=f"{key}-report"))


def submit(job: StudyJob, settings: Settings) -> str:
    """Queue ``job`` on the Celery broker; returns the id of the chain's last task.

    Publishing is retried briefly (3 tries within ~3 s), then raises: the listener keeps
    the study queued in its state database and submits it again later.
    """
    from mammo_density.worker.celery_app import get_app

    app = get_app(settings)
    result = signature_for(job, app).apply_async(
        retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                  "interval_step": 0.5, "interval_max": 1.5})
    log.info("study %s revision %d queued as %s", uid_hash(job.study_instance_uid),
             job.revision, result.id)
    return str(result.id)


__all__ = ["RETRY_OPTIONS", "TRANSIENT_ERRORS", "TransientError", "configure", "get_pipeline",
           "register", "reset_after_fork", "signature_for", "submit"]
