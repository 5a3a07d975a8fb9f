"""Time building and saving one density SR and one summary image (4-view study), and the
outbox's durable write.

    .venv/bin/python -m benchmarks.sr_build [--repeat 50] [--deliver N [--plain-tcp]]
        [--json]

Prints the first (cold) build, then median / p95 over ``--repeat`` builds of:
build (``build_density_sr``), save (``save_as`` to memory), build+save (wall clock and
this process's CPU time, which other load on the machine disturbs less), the outbox's
durable write (temp file + fsync + rename), and the read-back (``read_density_sr``); then
the same for the summary image (``build_summary_image`` with four 192 px thumbnails:
render + SCImage, save, durable write).
``--deliver N``: also N SRs (each with its own UIDs) enqueued in an outbox whose
destination is a real Orthanc on loopback and delivered (``Outbox.deliver_due``: claim,
read, associate, C-STORE, release, marked delivered), timed one by one; ``--plain-tcp``
does that without the node's TCP options (plugin/tcp.py), as before them.
The 1-minute load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_density.manifest import ModelManifest
from mammo_density.plugin.outbox import write_durably
from mammo_density.result import BreastDose, BreastResult, DoseSummary, ExamResult, StudyResult
from mammo_density.study.slots import SLOTS
from mammo_density.study.sop import MG_FOR_PRESENTATION
from mammo_density.worker.sr import build_density_sr, read_density_sr
from mammo_density.worker.summary import build_summary_image


def _headers() -> list[Dataset]:
    study = generate_uid()
    out = []
    for slot in SLOTS:
        side, view = slot.split("-")
        ds = Dataset()
        ds.SOPClassUID = MG_FOR_PRESENTATION
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study])
        ds.Modality = "MG"
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "B^M", "1", "", "F"
        ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "1", "A1", "20260101", "101010"
        ds.ImageLaterality, ds.ViewPosition = side, view
        ds.PatientOrientation = ["P", "L"] if side == "R" else ["A", "R"]
        ds.ImagerPixelSpacing = [0.1, 0.1]
        ds.Rows, ds.Columns = 3328, 2560
        out.append(ds)
    return out


def _inputs() -> tuple[StudyResult, list[Dataset], ModelManifest]:
    sources = _headers()
    manifest = ModelManifest(
        name="bench", version="1", task="birads4", classes=["A", "B", "C", "D"],
        views={s: f"{s}.onnx" for s in SLOTS}, input_size=512, preprocessing_version="1",
        files_sha256={f"{s}.onnx": "0" * 64 for s in SLOTS}, training_data="none",
        not_for_clinical_use=True)
    p = {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2}
    result = StudyResult(
        study_instance_uid=sources[0].StudyInstanceUID,
        exam=ExamResult(category="C", probabilities=p, dense=True, p_dense=0.8,
                        dense_source="birads4"),
        breasts={s: BreastResult(category="C", probabilities=p) for s in ("R", "L")},
        dose=DoseSummary(breasts={s: BreastDose(agd_mgy=1.4, agd_source="headers")
                                  for s in ("R", "L")}))
    return result, sources, manifest


def _deliver(result: StudyResult, sources: list[Dataset], manifest: ModelManifest, n: int,
             *, plain_tcp: bool = False) -> dict[str, float]:
    """Seconds of ``Outbox.deliver_due`` for ``n`` SRs, one at a time, to a real Orthanc."""
    from mammo_density.config import load_settings
    from mammo_density.plugin import send
    from mammo_density.plugin.outbox import Outbox
    from tests.e2e_nodes import SCRIPT, routing_config
    from tests.services import OrthancServer

    if plain_tcp:
        send.HANDLERS = []  # pynetdicom's own sockets: Nagle and delayed ACKs as they come
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = OrthancServer(Path(tmp) / "orthanc", SCRIPT, routing_config(1)).start()
        try:
            settings = load_settings(
                data_dir=Path(tmp) / "node",
                sr_destinations=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
            outbox = Outbox(settings, owner=True)
            for i in range(n + 1):  # the first is a warm-up
                version = manifest.model_copy(update={"version": f"1.{i}"})  # new UIDs
                outbox.enqueue(build_density_sr(result, sources, version),
                               study_uid=result.study_instance_uid)
                t0 = time.perf_counter()
                if outbox.deliver_due() != 1:
                    raise RuntimeError("the SR was not delivered to Orthanc")
                if i:
                    times.append(time.perf_counter() - t0)
        finally:
            orthanc.stop()
    return _stats(times)


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": round(statistics.median(values) * 1e3, 2),
            "p95_ms": round(p95 * 1e3, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--deliver", type=int, default=0, metavar="N",
                        help="also deliver N SRs to a real Orthanc and time it")
    parser.add_argument("--plain-tcp", action="store_true",
                        help="deliver without the TCP options of plugin/tcp.py")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    result, sources, manifest = _inputs()
    t0 = time.perf_counter()
    build_density_sr(result, sources, manifest)
    first = time.perf_counter() - t0

    build, save, both, durable, read, cpu = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            c0 = time.process_time()
            t0 = time.perf_counter()
            sr = build_density_sr(result, sources, manifest)
            t1 = time.perf_counter()
            buf = io.BytesIO()
            sr.save_as(buf, enforce_file_format=True)
            t2 = time.perf_counter()
            cpu.append(time.process_time() - c0)
            write_durably(sr, Path(tmp) / f"{i}.dcm")
            t3 = time.perf_counter()
            read_density_sr(pydicom.dcmread(io.BytesIO(buf.getvalue())))
            t4 = time.perf_counter()
            build.append(t1 - t0)
            save.append(t2 - t1)
            both.append(t2 - t0)
            durable.append(t3 - t2)
            read.append(t4 - t3)
    thumbs = {slot: np.linspace(0, 255, 192 * 192, dtype=np.uint8).reshape(192, 192)
              for slot in SLOTS}
    t0 = time.perf_counter()
    build_summary_image(result, sources, manifest, view_images=thumbs)
    sc_first = time.perf_counter() - t0
    sc_build, sc_save, sc_both, sc_durable, sc_cpu = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            c0 = time.process_time()
            t0 = time.perf_counter()
            sc = build_summary_image(result, sources, manifest, view_images=thumbs)
            t1 = time.perf_counter()
            sc_buf = io.BytesIO()
            sc.save_as(sc_buf, enforce_file_format=True)
            t2 = time.perf_counter()
            sc_cpu.append(time.process_time() - c0)
            write_durably(sc, Path(tmp) / f"{i}.dcm")
            t3 = time.perf_counter()
            sc_build.append(t1 - t0)
            sc_save.append(t2 - t1)
            sc_both.append(t2 - t0)
            sc_durable.append(t3 - t2)
    report = {
        "first_build_ms": round(first * 1e3, 1),
        "build": _stats(build), "save": _stats(save), "build_and_save": _stats(both),
        "build_and_save_cpu": _stats(cpu),
        "durable_write": _stats(durable), "read_back": _stats(read),
        "sr_bytes": len(buf.getvalue()), "repeat": args.repeat,
        "summary_first_build_ms": round(sc_first * 1e3, 1),
        "summary_build": _stats(sc_build), "summary_save": _stats(sc_save),
        "summary_build_and_save": _stats(sc_both),
        "summary_build_and_save_cpu": _stats(sc_cpu),
        "summary_durable_write": _stats(sc_durable),
        "summary_bytes": len(sc_buf.getvalue()),
        "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
    }
    if args.deliver:
        report["deliver_to_orthanc"] = _deliver(result, sources, manifest, args.deliver,
                                                plain_tcp=args.plain_tcp)
        report["plain_tcp"] = args.plain_tcp
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"first build: {report['first_build_ms']} ms   SR size: {report['sr_bytes']} B   "
              f"load average {report['load_average_1min']} on {report['cpus']} CPUs")
        print(f"summary image: first build {report['summary_first_build_ms']} ms, "
              f"{report['summary_bytes']} B")
        for key in ("build", "save", "build_and_save", "build_and_save_cpu", "durable_write",
                    "read_back", "summary_build", "summary_save", "summary_build_and_save",
                    "summary_build_and_save_cpu", "summary_durable_write"):
            s = report[key]
            print(f"{key:28s} median {s['median_ms']:7.2f} ms   p95 {s['p95_ms']:7.2f} ms")
        if args.deliver:
            s = report["deliver_to_orthanc"]
            print(f"{'deliver_to_orthanc':28s} median {s['median_ms']:7.2f} ms   "
                  f"p95 {s['p95_ms']:7.2f} ms" + ("   (plain TCP)" if args.plain_tcp else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
