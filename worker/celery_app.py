"""The Celery application, built from the node's settings (Redis broker).

Choices (Celery user guide "Tasks"/"Optimizing", the measured facts in docs/runtime.md):

- JSON only (``task_serializer``/``accept_content``): tasks carry a StudyJob (UIDs, no
  file paths) or compact model-ready arrays, never pickles.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a study whose worker dies is
  delivered again; the tasks are idempotent (deterministic SR UIDs, an outbox
  idempotent per SOP Instance UID, a state database that keeps one result per revision,
  and a "done already" check before work starts).
- ``worker_prefetch_multiplier = 1``: a worker holds no more studies than it runs.
- Time limits per task: hard ``settings.task_time_limit``, soft at 80 %.
- Redis ``visibility_timeout = settings.visibility_timeout`` (must exceed the hard
  limit: checked) and ``unacked_restore_interval = unacked_restore_throttle = 1``, so a
  killed worker's study returns to the queue about ``visibility_timeout`` seconds after
  delivery (kombu otherwise sweeps only every ~100 s; the default timeout is an hour).
- ``body_encoding = "utf-8"`` in the transport options: the bodies are JSON text, stored
  as they are rather than base64-encoded once more by kombu (docs/runtime.md).
- Queues: ``cpu`` (prepare, decide, report: they read the spool and write the state,
  outbox and hook queue, so they run on the host holding the data directory) and ``gpu``
  (infer: needs only the models and the broker); one host may consume both.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue

from mammo_density.config import ConfigError, Settings

log = logging.getLogger(__name__)

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
QUEUES = (CPU_QUEUE, GPU_QUEUE)
SOFT_LIMIT_FRACTION = 0.8

_apps: dict[tuple, Celery] = {}


def celery_config(settings: Settings) -> dict:
    """The Celery configuration for ``settings`` (plain data, for tests and docs)."""
    if not settings.broker_url:
        raise ConfigError("broker_url is empty: the Celery pipeline needs a Redis broker "
                          "(set broker_url / MAMMO_DENSITY_BROKER_URL, or run embedded)")
    hard = float(settings.task_time_limit)
    if settings.visibility_timeout <= hard:
        raise ConfigError(
            f"visibility_timeout ({settings.visibility_timeout:g} s) must exceed "
            f"task_time_limit ({hard:g} s): otherwise Redis hands a running study to a "
            "second worker")
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend or None,
        "task_ignore_result": not settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": hard,
        "task_soft_time_limit": hard * SOFT_LIMIT_FRACTION,
        "task_default_queue": CPU_QUEUE,
        "task_queues": [Queue(CPU_QUEUE), Queue(GPU_QUEUE)],
        "task_routes": {
            "mammo_density.prepare": {"queue": CPU_QUEUE},
            "mammo_density.infer": {"queue": GPU_QUEUE},
            "mammo_density.decide": {"queue": CPU_QUEUE},
            "mammo_density.report": {"queue": CPU_QUEUE},
            "mammo_density.run": {"queue": CPU_QUEUE},
        },
        "task_track_started": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5.0,
        "broker_transport_options": {
            "visibility_timeout": float(settings.visibility_timeout),
            "body_encoding": "utf-8",
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10.0,
            "socket_connect_timeout": 5.0,
        },
        "result_backend_transport_options": {"socket_timeout": 10.0},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_max_tasks_per_child": None,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
    }


def make_app(settings: Settings) -> Celery:
    """A new Celery app configured from ``settings``, with the pipeline tasks registered
    (a worker process also needs :func:`mammo_density.worker.tasks.configure`)."""
    from mammo_density.worker import tasks

    app = Celery("mammo_density", set_as_current=False)
    app.conf.update(celery_config(settings))
    tasks.register(app)
    return app


def get_app(settings: Settings) -> Celery:
    """The process's app for ``settings`` (cached per broker and limits)."""
    key = (settings.broker_url, settings.result_backend, settings.task_time_limit,
           settings.visibility_timeout, str(settings.data_dir), str(settings.model_dir))
    app = _apps.get(key)
    if app is None:
        app = _apps[key] = make_app(settings)
    return app


__all__ = ["CPU_QUEUE", "GPU_QUEUE", "QUEUES", "celery_config", "get_app", "make_app"]
