"""Studies per hour through Celery (real redis-server, real `mammo-density worker`).

    .venv/bin/python -m benchmarks.celery_throughput [--studies 24] [--concurrency 2]
        [--cores 2] [--input-size 650] [--model-dir DIR] [--single-task]
        [--model-variant fp32|int8] [--json]

``--studies`` copies of the full-field 4-view JPEG 2000 lossless study (new UIDs, pixel
data as stored) are received through the listener's ingest code (spool + state), then
submitted at once as prepare -> infer -> decide -> report chains (``--single-task``: as one
``run`` task each, the ``celery_single_task`` setting). One worker consuming both
queues, ``--concurrency`` processes, everything (worker, Redis, this driver) pinned to
``--cores`` cores. Throughput = studies / (time of the last "done" - submission time),
after one warm-up study. The CPU seconds the worker processes and Redis used per study
are measured too (psutil): on a shared machine they give the capacity of the cores
(``cores x 3600 / CPU-s``) independently of the other load. Also: the size of the
model-ready payload a study sends from the cpu to the gpu queue, and each study's
queue-to-done latency.

``--model-variant int8`` runs the same networks quantised (``model_variant = "int8"``): a
copy of the entry quantised as ``benchmarks.int8_speed`` does (8 synthetic calibration
studies, min-max; no parity report, so the worker warns). It measures speed only: a
site runs int8 after ``mammo-density quantize --parity`` has held on its labelled set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEFAULT_CACHE, bench_model, copies, full_field_study, pin_cores

REPO = Path(__file__).resolve().parent.parent


def _cpu_parts(worker_pid: int, redis_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the worker's main process, of its pool
    processes (children, recursively) and of Redis."""
    import psutil

    def seconds(procs) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    parts = {"worker_main": 0.0, "worker_pool": 0.0, "redis": 0.0}
    try:
        main = psutil.Process(worker_pid)
        parts["worker_main"] = seconds([main])
        parts["worker_pool"] = seconds(main.children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    with contextlib.suppress(psutil.NoSuchProcess):
        parts["redis"] = seconds([psutil.Process(redis_pid)])
    return parts


def _wait_done(db, uids: list[str], timeout: float) -> dict[str, float]:
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(uids) and time.monotonic() < deadline:
        for uid in uids:
            if uid in done:
                continue
            row = db.study(uid)
            if row and row["status"] in ("done", "failed"):
                done[uid] = time.monotonic()
        time.sleep(0.05)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--single-task", action="store_true",
                    help="celery_single_task: each study as one task (all four stages)")
    ap.add_argument("--model-variant", choices=("fp32", "int8"), default="fp32",
                    help="networks to run: fp32, or the entry quantised to int8 (speed only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    cores = pin_cores(args.cores)
    from mammo_density.config import load_settings
    from mammo_density.job import StudyJob
    from mammo_density.plugin.state import StateDB
    from mammo_density.worker import tasks
    from mammo_density.worker.pipeline import Pipeline
    from tests.services import RedisServer
    from tests.studies import receive

    work = Path(tempfile.mkdtemp(prefix="md-celery-bench-"))
    model_dir = bench_model(input_size=args.input_size, width=args.width,
                            model_dir=args.model_dir)
    if args.model_variant == "int8":
        from benchmarks.int8_speed import int8_entry

        model_dir = int8_entry(model_dir, DEFAULT_CACHE)
    study = full_field_study()
    sets = copies(study, args.studies + 1, work / "studies")
    redis = RedisServer(work / "redis").start()
    data = work / "data"
    settings = load_settings(broker_url=redis.url, data_dir=data, model_dir=model_dir,
                             ort_threads=1, task_time_limit=120, visibility_timeout=180,
                             celery_single_task=args.single_task,
                             model_variant=args.model_variant)
    env = dict(os.environ, MAMMO_DENSITY_BROKER_URL=redis.url,
               MAMMO_DENSITY_DATA_DIR=str(data), MAMMO_DENSITY_MODEL_DIR=str(model_dir),
               MAMMO_DENSITY_ORT_THREADS="1", MAMMO_DENSITY_TASK_TIME_LIMIT="120",
               MAMMO_DENSITY_VISIBILITY_TIMEOUT="180",
               MAMMO_DENSITY_MODEL_VARIANT=args.model_variant)
    log = open(work / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "mammo_density.cli", "-q", "worker", "--concurrency",
         str(args.concurrency)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    out: dict = {"cores": cores, "concurrency": args.concurrency, "studies": args.studies,
                 "single_task": args.single_task, "model_variant": args.model_variant,
                 "input_size": args.input_size,
                 "study": "4 x 3328x4096 12-bit JPEG 2000 lossless",
                 "load_avg_1min_start": round(os.getloadavg()[0], 2)}
    try:
        db = StateDB(settings.state_db)
        jobs: list[StudyJob] = []
        for files in sets:
            receive(settings, files, jobs.append)
        # payload size: what one study sends from the cpu queue to the gpu queue
        payload = Pipeline(settings).prepare(jobs[0]).to_payload()
        out["payload_kb"] = round(len(json.dumps(payload)) / 1024, 1)
        # warm-up study (worker start, model load in each process)
        t0 = time.monotonic()
        tasks.submit(jobs[0], settings)
        if not _wait_done(db, [jobs[0].study_instance_uid], 300):
            raise RuntimeError("warm-up study not done: see " + str(work / "worker.log"))
        out["warmup_s"] = round(time.monotonic() - t0, 2)
        batch = jobs[1:]
        uids = [j.study_instance_uid for j in batch]
        cpu0 = _cpu_parts(worker.pid, redis.proc.pid)
        start = time.monotonic()
        for job in batch:
            tasks.submit(job, settings)
        done = _wait_done(db, uids, 60 + 30 * len(batch))
        end = max(done.values()) if done else time.monotonic()
        cpu1 = _cpu_parts(worker.pid, redis.proc.pid)
        parts = {k: cpu1[k] - cpu0[k] for k in cpu0}
        cpu_used = sum(parts.values())
        statuses = [db.study(u)["status"] for u in uids]
        elapsed = end - start
        per_study = cpu_used / max(1, len(done))
        out["cpu_s_per_study"] = round(per_study, 3)
        out["cpu_s_per_study_parts"] = {k: round(v / max(1, len(done)), 3)
                                        for k, v in parts.items()}
        # what the cores could do if the machine were not shared: cores x 3600 / CPU-s
        out["capacity_studies_per_hour_from_cpu"] = round(len(cores) * 3600 / per_study)
        out.update({
            "done": statuses.count("done"), "failed": statuses.count("failed"),
            "elapsed_s": round(elapsed, 2),
            "studies_per_hour": round(len(done) / elapsed * 3600) if elapsed else None,
            "latency_s_median": round(statistics.median(t - start for t in done.values()), 2)
            if done else None,
        })
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        redis.stop()
    out["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
