"""Ingest throughput and memory of the listener, against dcmtk's storescp in the same run.

Throughput: the same dcmtk ``storescu`` sends N full-size mammograms (3328 x 4096, 16 bit,
~27 MB each, explicit VR little endian) over loopback to (a) dcmtk ``storescp`` writing
files (no fsync) with its default and its largest PDU size, and (b) ``mammo-density serve
--receive-only`` (fsync'd spool + SQLite state + study assembly). Rounds alternate; the
median per SCP is reported, and the ratio storescp time / serve time (>= 1.0: serve is at
least as fast).

Memory: ``serve`` receives ``--rss-images`` full-size images (unique instances, 4 per
study) from a pynetdicom client; its RSS (psutil) is sampled every 0.2 s.

Run: ``.venv/bin/python -m benchmarks.ingest [--images 16] [--rounds 3] [--rss-images 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from mammo_density.study.sop import MG_FOR_PRESENTATION as MG_PRES

VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def full_size(study_uid: str, index: int, pixels: bytes) -> Dataset:
    lat, view = VIEWS[index % 4]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_PRES
    ds.SOPClassUID = MG_PRES
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.ImageLaterality, ds.ViewPosition = lat, view
    ds.InstanceNumber = index + 1
    ds.Rows, ds.Columns = 4096, 3328
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds


def make_pixels() -> bytes:
    rng = np.random.default_rng(0)
    return rng.integers(0, 1 << 14, size=(4096, 3328), dtype=np.uint16).tobytes()


def serve_cmd(port: int, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mammo_density.cli", "-q", "serve", "--receive-only",
            "--port", str(port), "--data-dir", str(data_dir)]


def serve_env() -> dict[str, str]:
    env = {**os.environ, "MAMMO_DENSITY_LISTEN_HOST": "127.0.0.1",
           "MAMMO_DENSITY_MIN_FREE_DISK_MB": "0", "MAMMO_DENSITY_STABLE_SECONDS": "600",
           "MAMMO_DENSITY_MAX_ASSOCIATIONS": "4"}
    env.pop("MAMMO_DENSITY_CONFIG", None)
    return env


def time_storescu(port: int, aet: str, folder: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["storescu", "-aec", aet, "+sd", "127.0.0.1", str(port), str(folder)],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return elapsed


def run_storescp(work: Path, folder: Path, max_pdu: int | None) -> float:
    port = free_port()
    out = work / "storescp-out"
    out.mkdir()
    cmd = ["storescp", "-od", str(out)]
    if max_pdu:
        cmd += ["--max-pdu", str(max_pdu)]
    proc = subprocess.Popen([*cmd, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return time_storescu(port, "ANY-SCP", folder)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(out)


def run_serve(work: Path, folder: Path, n: int) -> float:
    port = free_port()
    data = work / "serve-data"
    proc = subprocess.Popen(serve_cmd(port, data), env=serve_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        elapsed = time_storescu(port, "MAMMODENSITY", folder)
        stored = len(list((data / "spool").glob("*/*.dcm")))
        if stored != n:
            raise RuntimeError(f"serve stored {stored} of {n}")
        return elapsed
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(data)


def throughput(work: Path, n: int, rounds: int, pixels: bytes) -> dict:
    folder = work / "send"
    folder.mkdir()
    study_uid = generate_uid()
    for i in range(n):
        if i % 4 == 0:
            study_uid = generate_uid()
        full_size(study_uid, i, pixels).save_as(folder / f"{i:04d}.dcm",
                                                 enforce_file_format=True)
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    times: dict[str, list[float]] = {"storescp": [], "storescp_maxpdu": [], "serve": []}
    for _ in range(rounds):
        times["storescp"].append(run_storescp(work, folder, None))
        times["storescp_maxpdu"].append(run_storescp(work, folder, 131072))
        times["serve"].append(run_serve(work, folder, n))
    shutil.rmtree(folder)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "images": n, "megabytes": round(size_mb, 1), "rounds": rounds,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "MB_per_s": {k: round(size_mb / v, 1) for k, v in med.items()},
        "ratio_vs_storescp_default": round(med["storescp"] / med["serve"], 2),
        "ratio_vs_storescp_maxpdu": round(med["storescp_maxpdu"] / med["serve"], 2),
    }


def rss(work: Path, n: int, pixels: bytes) -> dict:
    port = free_port()
    data = work / "rss-data"
    proc = subprocess.Popen(serve_cmd(port, data), env=serve_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, int, int]] = []  # (t, images sent, rss)
    sent = [0]
    stop = threading.Event()
    try:
        wait_port(port)
        ps = psutil.Process(proc.pid)
        baseline = ps.memory_info().rss

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - t0, sent[0], ps.memory_info().rss))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(MG_PRES, ExplicitVRLittleEndian)
        ae.maximum_pdu_size = 0
        assoc = ae.associate("127.0.0.1", port, ae_title="MAMMODENSITY")
        start = time.perf_counter()
        study_uid = generate_uid()
        for i in range(n):
            if i % 4 == 0:
                study_uid = generate_uid()
            status = assoc.send_c_store(full_size(study_uid, i, pixels)).Status
            if status != 0:
                raise RuntimeError(f"image {i}: status 0x{status:04X}")
            sent[0] = i + 1
        elapsed = time.perf_counter() - start
        assoc.release()
        time.sleep(0.5)
        stop.set()
        sampler.join()
        stored = len(list((data / "spool").glob("*/*.dcm")))
    finally:
        stop.set()
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(data, ignore_errors=True)
    mib = 1024 * 1024
    during = [s[2] for s in samples if s[1] >= 10]
    first = [s[2] for s in samples if 10 <= s[1] <= 30]
    last = [s[2] for s in samples if s[1] >= n - 20]
    return {
        "images": n, "stored": stored, "seconds": round(elapsed, 1),
        "rss_baseline_mib": round(baseline / mib, 1),
        "rss_max_mib": round(max(s[2] for s in samples) / mib, 1),
        "rss_images_10_30_median_mib": round(statistics.median(first) / mib, 1),
        "rss_last_20_median_mib": round(statistics.median(last) / mib, 1),
        "rss_growth_after_10_images_mib": round((max(during) - min(during)) / mib, 1),
        "samples": len(samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-images", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    pixels = make_pixels()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.workdir))
    try:
        result = {"throughput": throughput(work, args.images, args.rounds, pixels)}
        if args.rss_images:
            result["rss"] = rss(work, args.rss_images, pixels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
