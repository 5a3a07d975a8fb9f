"""``mammo-density serve``: the node's composition root.

Wires, top to bottom: the state database, the pipeline's ``submit`` (in-process
:class:`~mammo_density.worker.embedded.EmbeddedRunner` over a pipeline built with the
node's sinks by :func:`~mammo_density.commands.compose.node_pipeline`, or Celery when a
broker is configured), the DICOM listener, the SR outbox (owned here: serve decides the
SR destinations, also for SRs that Celery workers store) and the hook queue delivery
loops, and the stable-timeout timer (inside the listener). SIGTERM / SIGINT stop it
gracefully: no new associations, running ones finish, in-process studies finish, loops
stop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from mammo_density.config import Settings
from mammo_density.job import StudyJob

log = logging.getLogger(__name__)

OUTBOX_POLL_S = 0.1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the DICOM listener and the pipeline")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="TOML configuration file")
    p.add_argument("--port", type=int, help="DICOM port (listen_port)")
    p.add_argument("--ae-title", help="AE title of the listener")
    p.add_argument("--data-dir", help="state, spool and outbox folder")
    p.add_argument("--receive-only", action="store_true",
                   help="receive, spool and assemble studies but run no pipeline: ready "
                   "studies stay queued and are submitted by the next normal start")
    p.set_defaults(func=run)


def _pipeline_submit(settings: Settings) -> tuple[Callable[[StudyJob], Any], Callable[[], None]]:
    """The ``submit`` callable for the listener, and how to close it."""
    # Embedded: images prepared as they arrive, cached beside the spool
    # (prepare_on_arrival = false turns it off). Not with Celery: a worker starts on the
    # study before serve's preparer is done and decodes the same images again (measured
    # slower, benchmarks/README.md); workers still read entries they find in the spool.
    from mammo_density.plugin.ingest import on_spooled_images
    from mammo_density.worker import prepcache

    if settings.embedded and prepcache.start_for(settings, on_spooled_images) is not None:
        log.info("preparing images on arrival")
    if settings.embedded:
        from mammo_density.commands.compose import node_pipeline, warm_up_reporting
        from mammo_density.worker.embedded import EmbeddedRunner

        # highdicom's first SR and summary image cost 0.2-1 s: pay it now, beside the
        # listener's start, not in the first study's report stage
        threading.Thread(target=warm_up_reporting, args=(settings,), name="sr-warm-up",
                         daemon=True).start()

        runner = EmbeddedRunner(node_pipeline(settings, owns_outbox=True),
                                workers=settings.embedded_workers)
        log.info("pipeline: embedded, %d worker thread(s)", settings.embedded_workers)

        def close() -> None:
            runner.close(wait=True)
            prepcache.stop()

        return runner.submit, close
    from mammo_density.worker import tasks

    log.info("pipeline: Celery workers via the configured broker")
    return (lambda job: tasks.submit(job, settings)), lambda: prepcache.stop()


def _start_loops(settings: Settings, stop: threading.Event) -> list[threading.Thread]:
    """SR outbox and hook queue delivery loops, each in its own thread."""
    threads = []
    loops: list[tuple[str, Callable[[], Any]]] = []
    from mammo_density.plugin.outbox import Outbox

    # The SR is enqueued by the pipeline (possibly in a Celery worker process, which
    # leaves its routing to this owner): look for new SRs and due deliveries often, a
    # 1 s tick added ~0.5 s to the end-to-end latency (benchmarks/e2e_latency.py); an
    # empty poll is two SQLite queries.
    outbox = Outbox(settings, owner=True)
    loops.append(("sr-outbox", lambda stop: outbox.run_forever(stop, interval=OUTBOX_POLL_S)))
    from mammo_density.worker.hooks import HookQueue

    loops.append(("hook-queue", HookQueue(settings).run_forever))
    for name, loop in loops:
        thread = threading.Thread(target=loop, args=(stop,), name=name, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.memory import limit_heap_growth

    limit_heap_growth()  # before any worker thread: flat RSS over many studies
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from mammo_density import datadir

    datadir.private_umask()  # PHI on disk: files 0600, folders 0700 (docs/security.md)
    datadir.secure(settings.data_dir)
    try:
        lock = datadir.DataDirLock(settings.data_dir).acquire()
    except datadir.DataDirBusy as err:
        log.error("%s", err)
        return 1
    if not settings.sr_destinations and not args.receive_only:
        log.warning("no SR destination configured (sr_destinations): SRs are kept in %s "
                    "and sent nowhere", settings.outbox_dir)
    try:
        return _run_locked(args, settings, stop)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
    from mammo_density.plugin.listener import Listener
    from mammo_density.plugin.state import StateDB

    db = StateDB(settings.state_db)
    close_pipeline: Callable[[], None] = lambda: None  # noqa: E731
    threads: list[threading.Thread] = []
    if args.receive_only:
        log.warning("receive-only: studies are assembled and left queued, not assessed")

        def submit(job: StudyJob) -> None:
            return None
    else:
        try:
            submit, close_pipeline = _pipeline_submit(settings)
            threads = _start_loops(settings, stop)
        except ImportError as err:
            log.error("pipeline not available (%s); run with --receive-only to only receive",
                      err)
            return 2
    listener = Listener(settings, db, submit, receive_in_spool=True)
    try:
        listener.start(resume=not args.receive_only)
    except OSError as err:
        log.error("cannot listen on %s:%d: %s", settings.listen_host, settings.listen_port,
                  err.strerror or err)
        stop.set()
        close_pipeline()
        return 1
    try:
        listener.serve_until(stop)
    finally:
        stop.set()
        close_pipeline()
        for thread in threads:
            thread.join(timeout=10)
        db.close()
        log.info("stopped")
    return 0
