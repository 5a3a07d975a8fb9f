"""``mammo-density worker``: a Celery worker for the density pipeline.

Consumes the ``cpu`` queue (prepare from the spool; decide; report: SR into the outbox,
hooks, state) and the ``gpu`` queue (infer: ONNX) unless ``--queues`` says otherwise.
The ``cpu`` tasks read and write the data directory: run ``--queues cpu`` on the
listener's host, and ``--queues gpu`` on GPU hosts (they only need the model files and
the broker, and never open the data directory). SR destinations are not this process's
to decide: ``serve`` routes the SRs a worker stores. Starts with mingle, gossip and heartbeat off
(0.4 s instead of 1.4 s: the workers need no cluster events). Models are loaded once per
worker process (ONNX sessions are created after the fork).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from mammo_density.config import ConfigError, Settings

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a Celery worker (needs broker_url)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker-url", metavar="URL", help="Redis broker (overrides broker_url)")
    p.add_argument("--model-dir", metavar="DIR", help="model registry entry to use")
    p.add_argument("--queues", default="cpu,gpu",
                   help="comma-separated queues to consume: cpu, gpu (default: both)")
    p.add_argument("--concurrency", "-c", type=int, default=0,
                   help="worker processes (default: the CPU cores this process may use); "
                   "each study gets cores // concurrency for its own threads")
    p.add_argument("--pool", choices=("prefork", "solo", "threads"), default="prefork",
                   help="Celery pool (default prefork: one process per concurrent study)")
    p.add_argument("--hostname", "-n", default="",
                   help="node name (default mammo-density-PID@HOST)")
    p.add_argument("--loglevel", "-l", default="",
                   help="Celery log level (default from -v/-q)")
    p.set_defaults(func=run)


def _queues(text: str) -> list[str]:
    from mammo_density.worker.celery_app import QUEUES

    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise ConfigError(f"--queues must name {' and/or '.join(QUEUES)}; got {text!r}")
    return queues


def pool_share(settings: Settings, processes: int, cores: int) -> tuple[Settings, int]:
    """The settings and decoding threads of one of ``processes`` pool processes (or
    threads) sharing ``cores``: each study gets ``cores // processes`` (at least 1) for
    its own parallel work, its decoding threads and view networks at once, and ONNX
    Runtime's intra-op threads follow unless ``ort_threads`` is set.

    The pool already keeps every core busy with other studies. Before, each process
    sized its threads to the whole machine: on 16 cores, 16 processes of 4 decoding
    threads and two networks of 8 ONNX threads each, about 16 runnable threads a core.
    On the 2-core node the difference is within the noise (interleaved Celery runs,
    benchmarks/README.md). ``serve`` keeps the parallel study: it assesses one study at
    a time, for latency."""
    share = max(1, cores // max(1, processes))
    views = max(1, min(settings.ort_parallel_views, share))
    update: dict[str, int] = {"ort_parallel_views": views}
    if settings.ort_threads == 0:
        update["ort_threads"] = max(1, share // views)
    return settings.model_copy(update=update), share


def limit_image_threads(share: int) -> None:
    """OpenCV's own thread pool (the preprocessing's resizing and morphology, the
    thumbnails) sized to one pool process's ``share`` of the cores, like its decoding and
    ONNX threads. At OpenCV's default, a thread per core in every process, the same
    preparation costs ~13 ms more CPU a study on 2 cores (`benchmarks/opencv_threads.py`)."""
    import cv2

    cv2.setNumThreads(max(1, share))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.datadir import private_umask

    private_umask()  # SRs written to the outbox carry PHI: files 0600 (docs/security.md)
    from mammo_density.memory import freeze_startup_heap, limit_heap_growth

    limit_heap_growth()  # before any worker thread: flat RSS over many studies
    from celery.signals import worker_process_init

    from mammo_density.commands.compose import node_pipeline, warm_up_reporting
    from mammo_density.worker import tasks
    from mammo_density.worker.celery_app import CPU_QUEUE, GPU_QUEUE, make_app
    from mammo_density.worker.models import (
        ModelError,
        available_cores,
        resolve_model_dir,
        verify_entry,
    )

    try:
        queues = _queues(args.queues)
        app = make_app(settings)
    except ConfigError as err:
        print(f"mammo-density worker: {err}", file=sys.stderr)
        return 2
    try:  # fail at start, with the reason, rather than on the first study
        verify_entry(resolve_model_dir(settings.model_dir))
        if settings.dense_model_dir:
            verify_entry(settings.dense_model_dir)
    except ModelError as err:
        print(f"mammo-density worker: {err}", file=sys.stderr)
        return 2

    preload = GPU_QUEUE in queues
    warm_sr = CPU_QUEUE in queues
    cores = available_cores()
    processes = 1 if args.pool == "solo" else (args.concurrency or cores)
    pooled, share = pool_share(settings, processes, cores)
    log.info("%d concurrent studies on %d cores: each with %d decoding thread(s), %d view "
             "network(s) at once, %s ONNX Runtime thread(s) each", processes, cores, share,
             pooled.ort_parallel_views, pooled.ort_threads)
    tasks.configure(lambda: node_pipeline(pooled, owns_outbox=False, sinks=warm_sr,
                                          decode_workers=share))
    if args.pool != "prefork" and warm_sr:  # the studies run in this very process
        limit_image_threads(share)

    @worker_process_init.connect(weak=False)
    def _init_process(**_kwargs) -> None:  # in each pool process, after the fork
        tasks.reset_after_fork()
        if warm_sr:  # highdicom's lazy set-up off the first study's report
            limit_image_threads(share)
            warm_up_reporting(settings)
        if preload:
            try:
                pipeline = tasks.get_pipeline()
                pipeline.models  # noqa: B018 - ONNX sessions once per process
                pipeline.dense_models  # noqa: B018
            except Exception:
                log.exception("models could not be loaded in the worker process")
        freeze_startup_heap()  # out of the garbage collector's scans (memory.py)

    # Celery logs every task's return value at INFO ("succeeded in ...: {...}"): results
    # and payloads carry study/SOP UIDs, which the logs must not (UIDs only hashed).
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    level = args.loglevel or logging.getLevelName(logging.getLogger().level)
    hostname = args.hostname or f"mammo-density-{os.getpid()}@{socket.gethostname()}"
    argv = ["worker", "--queues", ",".join(queues), "--pool", args.pool,
            "--hostname", hostname, "--loglevel", str(level),
            "--without-mingle", "--without-gossip", "--without-heartbeat"]
    if args.pool != "solo":
        argv += ["--concurrency", str(processes)]
    log.info("worker %s consuming %s", hostname, ",".join(queues))
    app.worker_main(argv)
    return 0
