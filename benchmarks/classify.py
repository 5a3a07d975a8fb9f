"""Time the density assessment of one full-field 4-view JPEG 2000 lossless study.

    .venv/bin/python -m benchmarks.classify [--input-size 650] [--width 16] [--repeat 5]
        [--model-dir DIR] [--cores 2] [--no-serve] [--json]

- Study: 4 x 3328 x 4096 12-bit (Hologic-like, ``mammo_density.synth`` size "full"),
  JPEG 2000 lossless. Model: ``--model-dir`` or the method's DensityResNet (41 conv
  layers) at ``--width`` exported to ONNX (timings do not depend on the weights).
- Fast path: ``Pipeline.run`` as ``classify`` runs it (no SR, no state), models
  loaded, process pinned to ``--cores`` cores: median wall over ``--repeat`` runs
  after one warm-up, with the per-stage breakdown (read/decode/preprocess are summed
  over the 4 images, which run in parallel threads; ``prepare`` is that stage's wall
  time) and CPU seconds per study.
- Naive path in the same run: full-resolution decode, then the same area resize.
- ``classify`` CLI once, cold (process start + model load + study), as a user runs it.
- ``serve`` RSS: a real ``mammo-density serve`` (embedded pipeline) receives the study
  over DICOM (dcmtk ``storescu``); once the study is done, the RSS of the process with
  its models loaded (psutil). Skipped with ``--no-serve`` or without storescu.

The 1-minute load average is printed: the development VM is shared, so compare
figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import bench_model, full_field_study, pin_cores, study_files

REPO = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_path(pipeline, job, repeat: int) -> dict:
    pipeline.run(job)  # warm-up (page cache, ORT arenas)
    walls, cpus, stages = [], [], []
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        result = pipeline.run(job)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
        stages.append(result.timings_ms)
    keys = ["read", "decode", "preprocess", "prepare", "inference", "decide", "total"]
    return {
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_all": [round(w, 3) for w in walls],
        "cpu_s_median": round(statistics.median(cpus), 3),
        "stages_ms_median": {k: round(statistics.median(s.get(k, 0.0) for s in stages), 1)
                             for k in keys},
        "category": result.exam.category if result.exam else None,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_rss(files: list[Path], model_dir: Path, work: Path, timeout: float = 180) -> dict:
    """RSS of a real `mammo-density serve` after it assessed the study it received."""
    import psutil

    from mammo_density.plugin.state import StateDB

    storescu = shutil.which("storescu")
    if storescu is None:
        return {"skipped": "storescu not installed"}
    port = _free_port()
    data = work / "serve-data"
    env = dict(os.environ, MAMMO_DENSITY_MODEL_DIR=str(model_dir),
               MAMMO_DENSITY_ORT_THREADS="2", MAMMO_DENSITY_STABLE_SECONDS="5")
    env.pop("MAMMO_DENSITY_BROKER_URL", None)
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "mammo_density.cli", "serve", "--port",
                             str(port), "--data-dir", str(data)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        idle_rss = psutil.Process(proc.pid).memory_info().rss
        subprocess.run([storescu, "-xv", "-aec", "MAMMODENSITY", "127.0.0.1", str(port),
                        *map(str, files)], check=True, capture_output=True, timeout=120)
        import pydicom

        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            if (data / "state.sqlite3").exists():
                row = StateDB(data / "state.sqlite3").study(study_uid)
                status = row and row["status"]
                if status in ("done", "failed"):
                    break
            time.sleep(0.2)
        p = psutil.Process(proc.pid)
        rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(True))
        return {"status": status, "rss_mb_after_study": round(rss / 2**20, 1),
                "rss_mb_idle_before": round(idle_rss / 2**20, 1)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--naive-repeat", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    cores = pin_cores(args.cores)
    from mammo_density.commands.classify import collect_jobs
    from mammo_density.config import load_settings
    from mammo_density.spool_layout import FileImages
    from mammo_density.worker.pipeline import Pipeline

    study = full_field_study()
    model_dir = bench_model(input_size=args.input_size, width=args.width,
                            model_dir=args.model_dir)
    collected = collect_jobs([study])
    job = collected.jobs[0]
    images = FileImages(collected.files)
    work = Path(tempfile.mkdtemp(prefix="md-bench-"))
    settings = load_settings(model_dir=model_dir, data_dir=work / "data",
                             ort_threads=len(cores))
    out: dict = {"cores": cores, "load_avg_1min_start": round(os.getloadavg()[0], 2),
                 "input_size": args.input_size, "model": str(model_dir),
                 "study": "4 x 3328x4096 12-bit JPEG 2000 lossless"}
    fast = Pipeline(settings, images=images)
    t0 = time.perf_counter()
    fast.models  # noqa: B018
    out["model_load_s"] = round(time.perf_counter() - t0, 3)
    out["fast"] = _run_path(fast, job, args.repeat)
    naive = Pipeline(settings, images=images, models=fast.models, reduced_decode=False)
    out["naive"] = _run_path(naive, job, args.naive_repeat)
    out["speedup_wall"] = round(out["naive"]["wall_s_median"] / out["fast"]["wall_s_median"], 2)

    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "mammo_density.cli", "-q", "classify",
                          str(study), "--json", "--model-dir", str(model_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    out["classify_cli_cold_s"] = round(time.perf_counter() - t0, 3)
    out["classify_cli_rc"] = cli.returncode
    if not args.no_serve:
        out["serve"] = serve_rss(study_files(study), model_dir, work)
    out["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        f, n = out["fast"], out["naive"]
        print(f"cores {cores}, load avg {out['load_avg_1min_start']} -> "
              f"{out['load_avg_1min_end']}, input {args.input_size} px, model load "
              f"{out['model_load_s']} s")
        print(f"fast : median wall {f['wall_s_median']} s, cpu {f['cpu_s_median']} s, "
              f"stages {f['stages_ms_median']}")
        print(f"naive: median wall {n['wall_s_median']} s, cpu {n['cpu_s_median']} s, "
              f"stages {n['stages_ms_median']}")
        print(f"speed-up {out['speedup_wall']}x; classify CLI cold "
              f"{out['classify_cli_cold_s']} s (rc {cli.returncode})")
        if "serve" in out:
            print(f"serve: {out['serve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
