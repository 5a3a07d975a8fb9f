"""Celery tasks: the pipeline's four stages, one task each, on the queue they need.

A study travels as a chain, the same sentence as in embedded mode::

    prepare(job)               queue "cpu": state -> processing; read + decode +
                               preprocess from the spool; returns the model-ready arrays
                               (16-bit fixed point, zstd, base64: ~30-60 KB per 4-view
                               study at 64-256 px; see benchmarks/README.md)
      -> infer(prepared)       queue "gpu": ONNX per view; returns the probabilities
      -> decide(data, job)     queue "cpu": the method's rules, result, dose
      -> report(result, job)   queue "cpu": screening rules, SR -> outbox, hooks,
                               state -> done / failed

``run(job)`` runs :meth:`Pipeline.run` (all four) in one task, on the cpu queue: what
:func:`submit` sends with ``settings.celery_single_task`` (one host whose workers take both
queues; the arrays never cross Redis: ~10% less CPU a study). Tasks take a JSON
StudyJob: UIDs, never file paths; the worker finds the images in its own spool only.
Tasks are idempotent and skip a study revision the state shows done. Retries are
declarative and only for transient errors (a busy SQLite database, a lost connection); a
bad study is never retried: the pipeline records it as failed with the reason.

Which host runs what: ``infer`` needs only the broker and the model files. The ``cpu``
tasks read the spool and write the state database, the outbox and the hook queue: run the
``cpu`` queue on the host that holds the data directory (the listener's). This module
builds no sink itself: the ``worker`` command (the composition root) hands
:func:`configure` a factory that does.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery, chain, current_task
from celery.exceptions import SoftTimeLimitExceeded

from mammo_density.config import Settings
from mammo_density.job import StudyJob
from mammo_density.logsetup import uid_hash
from mammo_density.result import StudyResult
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

#: Times a task whose claim was refused looks again (each after the other claim's age
#: reaches the hard time limit); one is enough unless the claim keeps being renewed.
CLAIM_RECHECKS = 3

PipelineFactory = Callable[[], Pipeline]

_factory: PipelineFactory | None = None
_pipeline: Pipeline | None = None
_pipeline_lock = threading.Lock()


def configure(factory: PipelineFactory) -> None:
    """How this process builds its Pipeline (with its sinks), called lazily, once per
    worker process, after the fork (ONNX sessions and SQLite handles do not fork)."""
    global _factory, _pipeline
    _factory = factory
    _pipeline = None


def get_pipeline() -> Pipeline:
    """This process's Pipeline: models loaded once per worker process, on first use."""
    global _pipeline
    if _pipeline is None:
        with _pipeline_lock:
            if _pipeline is None:
                if _factory is None:
                    raise RuntimeError("tasks.configure(factory) was not called")
                _pipeline = _factory()
    return _pipeline


def reset_after_fork() -> None:
    """Drop a pipeline inherited from a parent process (ONNX sessions do not fork)."""
    global _pipeline
    _pipeline = None


def _already_done(pipeline: Pipeline, job: StudyJob) -> bool:
    try:
        return pipeline.already_done(job)
    except sqlite3.OperationalError:
        raise
    except Exception:
        return False


def _claim_lifetime(pipeline: Pipeline) -> float:
    """Seconds after which a claim is held by a dead task: the hard time limit."""
    return float(pipeline.settings.task_time_limit)


def _came_back() -> bool:
    """This delivery is not the message's first: Redis handed it back (its worker
    process died) or it is this task's own retry."""
    request = getattr(current_task, "request", None)  # None outside a worker's task
    if request is None or request.called_directly:
        return False
    return bool((request.delivery_info or {}).get("redelivered")) or request.retries > 0


def _claim(pipeline: Pipeline, job: StudyJob, submission: str) -> bool:
    """Claim the revision in the state database (False: another copy of this task, e.g.
    one re-submitted by the listener's sweep for a lost message, is already on it).

    ``submission`` (one per :func:`submit` call, kept by redeliveries and retries) owns
    the claim: a message of the same submission that comes back takes it again at once;
    the claiming delivery is over (its process died, or it raised for the retry)."""
    try:
        # a claim older than the task's hard time limit is held by a dead task: its
        # message is the one redelivered now (after the visibility timeout)
        held = pipeline.claim(job, stale_after=_claim_lifetime(pipeline), owner=submission)
    except sqlite3.OperationalError:
        raise
    except Exception:
        log.exception("study %s: claim failed; going on", uid_hash(job.study_instance_uid))
        return True
    if held and _came_back():
        log.warning("study %s revision %d: this submission's message came back "
                    "(redelivered or retried); assessing it again",
                    uid_hash(job.study_instance_uid), job.revision)
    return held


def _claim_refused(pipeline: Pipeline, job: StudyJob) -> dict[str, Any]:
    """The claim was refused: another submission holds it (its own is taken again in
    :func:`_claim`). A finished, failed or superseded revision is skipped, and so is a
    first delivery of a duplicate message (the sweep's re-submission while the holder
    works: if the holder dies, its own message comes back and takes the claim). A
    message that comes back (redelivered, or this task's own retry) looks again, as a
    Celery retry, once the claim is ``task_time_limit`` old: by then the holder is done
    (skip) or dead (taken over); skipping it at once could leave the study in
    ``processing`` for good."""
    try:
        wait = pipeline.claim_held_for(job, stale_after=_claim_lifetime(pipeline))
    except sqlite3.OperationalError:
        raise
    except Exception:
        log.exception("study %s: claim state unreadable", uid_hash(job.study_instance_uid))
        wait = None
    if wait is None:
        return _skipped(job, "finished or superseded")
    request = getattr(current_task, "request", None)  # None outside a worker's task
    if request is None or request.called_directly:
        return _skipped(job, "held by another task")
    if not _came_back():
        return _skipped(job, "held by another task (a duplicate message)")
    if request.retries >= CLAIM_RECHECKS:
        log.error("study %s revision %d: still held by another task after %d looks; "
                  "left to it", uid_hash(job.study_instance_uid), job.revision,
                  request.retries)
        return _skipped(job, "held by another task")
    countdown = wait + 1.0
    log.warning("study %s revision %d is held by another task (dead or running): looking "
                "again in %.0f s", uid_hash(job.study_instance_uid), job.revision, countdown)
    raise current_task.retry(countdown=countdown, max_retries=CLAIM_RECHECKS)


def _skipped(job: StudyJob, why: str = "already done") -> dict[str, Any]:
    log.info("study %s revision %d %s: skipped", uid_hash(job.study_instance_uid),
             job.revision, why)
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

def prepare(job_json: dict[str, Any], submission: str = "") -> dict[str, Any]:
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    if _already_done(pipeline, job):
        return _skipped(job)
    if not _claim(pipeline, job, submission):
        return _claim_refused(pipeline, job)
    try:
        prepared = pipeline.prepare(job)
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("preprocessing", err))
    return prepared.to_payload()


def infer(payload: dict[str, Any]) -> dict[str, Any]:
    """GPU side: touches neither the spool nor the state (another host may run it); a
    failure travels on to ``decide``, which records it."""
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


def decide(data: dict[str, Any], job_json: dict[str, Any]) -> dict[str, Any]:
    """CPU side: the method's rules and the result (headers read from the spool). The
    result travels on with the thumbnails ``prepare`` made for the summary image."""
    if data.get("skipped"):
        return data
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    if data.get("error"):
        return _failed(pipeline, job, str(data["error"]))
    try:
        prepared = Prepared.from_payload(data["prepared"])
        inferred = Inferred.from_payload(data["inferred"])
        result = pipeline.decide(job, prepared, inferred)
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("decide", err))
    return {"result": result.model_dump(mode="json"),
            "thumbnails": data["prepared"].get("thumbnails") or {}}


def report(data: dict[str, Any], job_json: dict[str, Any]) -> dict[str, Any]:
    """CPU side, where the data directory is: SR and summary image -> outbox, hooks,
    state."""
    if data.get("skipped"):
        return data
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    try:
        result = StudyResult.model_validate(data["result"])
        thumbnails = Prepared.from_payload({"study_instance_uid": job.study_instance_uid,
                                            "thumbnails": data.get("thumbnails")}).thumbnails
        result = pipeline.report(job, result, thumbnails=thumbnails)
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("report", err))
    log.info("study %s revision %d: %s", uid_hash(job.study_instance_uid), job.revision,
             result.exam.category if result.exam else "not assessable")
    return result.model_dump(mode="json")


def run(job_json: dict[str, Any], submission: str = "") -> dict[str, Any]:
    """The four stages in one task (one host does all)."""
    job = StudyJob.model_validate(job_json)
    pipeline = get_pipeline()
    if _already_done(pipeline, job):
        return _skipped(job)
    if not _claim(pipeline, job, submission):
        return _claim_refused(pipeline, job)
    try:
        return pipeline.run(job).model_dump(mode="json")
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        return _failed(pipeline, job, _reason("pipeline", err))


STAGES = (prepare, infer, decide, report)


def task_name(fn: Callable[..., Any]) -> str:
    return f"mammo_density.{fn.__name__}"


def register(app: Celery) -> None:
    """Register the tasks on ``app`` (a worker also calls :func:`configure`)."""
    for fn in (*STAGES, run):
        app.task(name=task_name(fn), **RETRY_OPTIONS)(fn)


def signature_for(job: StudyJob, app: Celery, *, single_task: bool = False,
                  submission: str = ""):
    """The prepare -> infer -> decide -> report chain of one study, or with
    ``single_task`` the one ``run`` task doing all four (``settings.celery_single_task``).
    ``submission`` names this sending of the study (it owns the claim, see
    :func:`_claim`)."""
    job_json = job.model_dump(mode="json")
    key = f"md-{uid_hash(job.study_instance_uid)}-r{job.revision}"  # idempotent task ids
    if single_task:
        return app.signature(task_name(run), args=(job_json, submission),
                             task_id=f"{key}-run")
    return chain(app.signature(task_name(prepare), args=(job_json, submission),
                               task_id=f"{key}-prepare"),
                 app.signature(task_name(infer), task_id=f"{key}-infer"),
                 app.signature(task_name(decide), args=(job_json,), task_id=f"{key}-decide"),
                 app.signature(task_name(report), args=(job_json,), task_id=f"{key}-report"))


def submit(job: StudyJob, settings: Settings) -> str:
    """Queue ``job`` on the Celery broker; returns the id of the chain's last task.

    Publishing is retried briefly (3 tries within ~3 s), then raises: the listener keeps
    the study queued in its state database and submits it again later.
    """
    from mammo_density.worker.celery_app import get_app

    app = get_app(settings)
    submission = uuid.uuid4().hex  # a new one per sending: the sweep's copy is another
    result = signature_for(job, app, single_task=settings.celery_single_task,
                           submission=submission).apply_async(
        retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                  "interval_step": 0.5, "interval_max": 1.5})
    log.info("study %s revision %d queued as %s", uid_hash(job.study_instance_uid),
             job.revision, result.id)
    return str(result.id)


__all__ = ["RETRY_OPTIONS", "STAGES", "TRANSIENT_ERRORS", "PipelineFactory", "TransientError",
           "configure", "get_pipeline", "register", "reset_after_fork", "signature_for",
           "submit", "task_name"]
