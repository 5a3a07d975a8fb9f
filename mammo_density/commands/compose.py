"""How ``serve`` and ``worker`` assemble the node's pipeline: one place for the wiring.

The pipeline gets its images from the node's spool (nothing outside it) and writes to
the node's state database, SR outbox and hook queue, all under ``settings.data_dir``.
Who owns the outbox and the hook queue matters: ``serve`` does (it decides SR
destinations and which hooks get each event, and delivers); a Celery worker only stores
SRs and events there, so its own environment cannot change where they go. A worker
that consumes only the ``gpu`` queue gets no sink at all: it runs
``infer`` and never touches the data directory.
"""

from __future__ import annotations

import logging

from mammo_density.config import Settings
from mammo_density.spool_layout import SpoolImages
from mammo_density.worker.pipeline import Pipeline

log = logging.getLogger(__name__)


def node_pipeline(settings: Settings, *, owns_outbox: bool, sinks: bool = True,
                  **options) -> Pipeline:
    """The node's Pipeline.

    Parameters
    ----------
    settings
        The node's settings.
    owns_outbox
        True in ``serve`` (embedded pipeline), False in a Celery worker (SRs and hook
        events are routed by ``serve``).
    sinks
        False for an inference-only (``gpu``) worker: no spool, state, outbox or hooks.
    options
        Passed on to :class:`Pipeline` (``models``, ``decode_workers``, ...).
    """
    if not sinks:
        return Pipeline(settings, **options)
    from mammo_density.plugin.outbox import Outbox
    from mammo_density.plugin.state import StateDB
    from mammo_density.worker.sinks import QueuedHooks

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Pipeline(settings, images=SpoolImages(settings.spool_dir),
                    states=StateDB(settings.state_db),
                    outbox=Outbox(settings, owner=owns_outbox),
                    hooks=QueuedHooks(settings, route=owns_outbox), **options)


def warm_up_reporting(settings: Settings) -> None:
    """highdicom's lazy set-up (SR, and the summary image when it is on) done now, off the
    first study's report stage; errors are logged, never raised."""
    try:
        from mammo_density.worker import sr

        sr.warm_up()
        if settings.sr_summary_image:
            from mammo_density.worker import summary

            summary.warm_up()
    except Exception:
        log.exception("SR warm-up failed")


__all__ = ["node_pipeline", "warm_up_reporting"]
