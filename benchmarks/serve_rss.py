"""`serve` memory over many studies: RSS with the 650 px models loaded, after N studies.

    .venv/bin/python -m benchmarks.serve_rss [--studies 200] [--cores 2]
        [--input-size 650] [--width 16] [--model-dir DIR] [--json]

One ``mammo-density serve`` (embedded pipeline) on a loopback port, every process pinned
to ``--cores``. Each study is a fresh copy (new UIDs, pixel data as stored) of the
full-field 4-view JPEG 2000 lossless study (benchmarks.common), sent over one pynetdicom
association; the next is sent once the state database says the previous one is done.
The serve process's RSS (psutil) is sampled idle, after the first study and at the
checkpoints; "flat" compares the RSS at the last checkpoint with the one at study 10.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pydicom
from pynetdicom import AE

from benchmarks.common import bench_model, copies, full_field_study, pin_cores


def send(paths: list[Path], port: int) -> None:
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="MODALITY")
    ae.maximum_pdu_size = 0
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MAMMODENSITY")
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        assoc.release()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment of serve (e.g. MAMMO_DENSITY_ORT_PARALLEL_VIEWS=1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cores = pin_cores(args.cores)
    from mammo_density.plugin.state import StateDB
    from tests.e2e_nodes import node_env, serve

    model = bench_model(input_size=args.input_size, width=args.width,
                        model_dir=args.model_dir)
    study = full_field_study()
    work = Path(tempfile.mkdtemp(prefix="md-rss-bench-"))
    data = work / "node" / "data"
    env = node_env(data, orthanc_dicom_port=0, model_dir=model,
                   extra={"MAMMO_DENSITY_SR_DESTINATIONS": "",
                          "MAMMO_DENSITY_STABLE_SECONDS": "60",
                          **dict(e.split("=", 1) for e in args.env)})
    env.pop("OMP_NUM_THREADS", None)
    node = serve(data, env).start()
    proc = psutil.Process(node.proc.pid)  # type: ignore[union-attr]
    marks = sorted({1, 10, 50, 100, 150, args.studies} & set(range(1, args.studies + 1)))
    out: dict = {"studies": args.studies, "cores": cores, "input_size": args.input_size,
                 "env": args.env,
                 "load_avg_start": round(os.getloadavg()[0], 2), "rss_mib": {}}
    try:
        time.sleep(2.0)
        out["rss_mib"]["idle"] = round(proc.memory_info().rss / 2**20, 1)
        db = StateDB(data / "state.sqlite3")
        t0 = time.monotonic()
        for i in range(1, args.studies + 1):
            folder = work / f"s{i}"
            paths = copies(study, 1, folder)[0]
            uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            send(paths, node.port)  # type: ignore[arg-type]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                row = db.study(uid)
                if row and row["status"] in ("done", "failed"):
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"study {i} not done:\n{node.tail()}")
            if row["status"] != "done":
                raise RuntimeError(f"study {i} failed:\n{node.tail()}")
            shutil.rmtree(folder)
            if i in marks:
                out["rss_mib"][str(i)] = round(proc.memory_info().rss / 2**20, 1)
                print(f"study {i}: RSS {out['rss_mib'][str(i)]} MiB", file=sys.stderr)
        out["elapsed_s"] = round(time.monotonic() - t0, 1)
        last, ten = out["rss_mib"][str(marks[-1])], out["rss_mib"].get("10")
        out["growth_after_study_10_mib"] = round(last - ten, 1) if ten else None
    finally:
        node.stop()
        out["load_avg_end"] = round(os.getloadavg()[0], 2)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
