"""End-to-end latency: last image stored in Orthanc -> density SR (and summary image)
stored in Orthanc.

    .venv/bin/python -m benchmarks.e2e_latency [--studies 20] [--cores 2] [--broker]
        [--model-dir DIR] [--data DIR] [--no-summary] [--ab KEY=VALUE ...]
        [--ab-checkout DIR] [--plugin KEY=JSON ...] [--ab-plugin KEY=JSON ...] [--json]

Real processes on loopback: Orthanc 1.10 with the routing plugin
(plugin/orthanc/mammo_density_orthanc.py), ``mammo-density serve`` (embedded pipeline by
default; ``--broker`` = a real redis-server plus one ``mammo-density worker``), the
bundled demo model unless ``--model-dir`` names another registry entry. Each study is a
synthetic 4-view full-field screening study in JPEG 2000 lossless (``mammo_density.synth``,
cached under ``--data``). For each study the four images go to Orthanc over one pynetdicom
association; the clock starts when the last C-STORE response arrives and stops when
Orthanc's change log shows the SR's and the summary image's NewInstance (polled every
5 ms; ``--no-summary`` turns the summary image off, ``sr_median_s`` is the SR alone). Hops included:
Orthanc -> plugin -> C-STORE to the node -> assembly -> decode/preprocess/infer -> SR
build -> outbox C-STORE -> Orthanc. One warm-up study is not counted. ``--cores 2``
pins every process to two CPUs (``sched_setaffinity``), like the 2-core target machine.
``--ab MAMMO_DENSITY_X=...`` runs a second Orthanc + node whose node has those settings and
sends every study to both stacks, alternating which goes first: both figures come from one
run on the same load. ``--ab-checkout DIR`` does the same with the second node run from
another checkout of the project (``DIR/.venv/bin/python``, e.g. the previous main): code
versions compared in one run (the Orthanc plugin is this checkout's for both).
``--plugin KEY=JSON`` sets a routing plugin setting (the ``MammoDensity`` section, e.g.
``ForwardEachImage=true``) on every stack; ``--ab-plugin KEY=JSON`` on the second stack
only (an A/B of the plugin's settings). The JSON names each stack's ``plugin_settings``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests
from pynetdicom import AE

from mammo_density.synth import generate
from tests.e2e_nodes import (
    SCRIPT,
    NodeProcess,
    node_env,
    routing_config,
    serve,
    worker,
)
from tests.services import REPO, OrthancServer, RedisServer, free_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def studies(data: Path, count: int, seed: int) -> list[list[Path]]:
    """``count`` full-field JPEG 2000 lossless studies (generated once, then reused)."""
    marker = data / f"done-{count}-{seed}.json"
    if marker.exists():
        return [[Path(p) for p in s] for s in json.loads(marker.read_text())]
    records = generate(data / f"studies-{seed}", studies=count, seed=seed, size="full",
                       transfer_syntax="jpeg2000", jobs=2)
    out = [[im.path.resolve() for im in rec.standard_images()] for rec in records]
    marker.write_text(json.dumps([[str(p) for p in s] for s in out]))
    return out


def send(paths: list[Path], port: int) -> float:
    """C-STORE the study into Orthanc over one association; time of the last response."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="MODALITY")
    ae.maximum_pdu_size = 0
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    if not assoc.is_established:
        raise RuntimeError("Orthanc refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE into Orthanc failed: {status}")
        return time.perf_counter()
    finally:
        assoc.release()


def last_change(server: OrthancServer) -> int:
    return int(requests.get(server.url + "/changes?last", timeout=10).json()["Last"])


def wait_for_reports(server: OrthancServer, since: int, modalities: set[str],
                     timeout: float = 120.0) -> dict[str, float]:
    """Poll Orthanc's change log until a new instance of each of ``modalities`` ("SR",
    "OT" = the summary image) appears; time of detection per modality."""
    deadline = time.perf_counter() + timeout
    session = requests.Session()
    seen: dict[str, float] = {}
    while time.perf_counter() < deadline:
        data = session.get(server.url + f"/changes?since={since}&limit=100", timeout=10).json()
        now = time.perf_counter()
        for change in data["Changes"]:
            since = max(since, int(change["Seq"]))
            if change["ChangeType"] != "NewInstance":
                continue
            tags = session.get(server.url + f"/instances/{change['ID']}/simplified-tags",
                               timeout=10).json()
            modality = tags.get("Modality")
            if modality in modalities and modality not in seen:
                seen[modality] = now
        if set(seen) == modalities:
            return seen
        time.sleep(0.005)
    raise TimeoutError(f"not all of {sorted(modalities)} arrived in Orthanc: {sorted(seen)}")


def forward_seconds(log: Path) -> list[float]:
    """The plugin's own timing of each forward (from Orthanc's log)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [float(x) for x in re.findall(r"sent to \S+ \(four-views\) in ([0-9.]+) s", text)]


class Stack:
    """Orthanc with the routing plugin + `serve` (+ Redis and a worker with ``broker``)."""

    def __init__(self, work: Path, model_dir: Path | None, broker: bool,
                 extra: dict[str, str], summary: bool = True,
                 checkout: Path | None = None, plugin: dict | None = None) -> None:
        self.checkout = checkout
        self.node_port = free_port()
        self.plugin = dict(plugin or {})
        self.server = OrthancServer(work / "orthanc", SCRIPT,
                                    {**routing_config(self.node_port, **self.plugin),
                                     "StableAge": 60})
        self.redis = RedisServer(work / "redis").start() if broker else None
        data_dir = work / "node" / "data"
        self.env = node_env(data_dir, orthanc_dicom_port=0, model_dir=model_dir,
                            broker_url=self.redis.url if self.redis else "",
                            extra={"MAMMO_DENSITY_STABLE_SECONDS": "60", **extra})
        self.env.pop("OMP_NUM_THREADS", None)
        self.env["MAMMO_DENSITY_SR_SUMMARY_IMAGE"] = "true" if summary else "false"
        self.wanted = {"SR", "OT"} if summary else {"SR"}
        self.data_dir = data_dir
        self.broker = broker
        self.processes: list[NodeProcess] = []
        self.latencies: list[float] = []
        self.sr_latencies: list[float] = []

    def start(self) -> Stack:
        self.server.start()
        self.env["MAMMO_DENSITY_SR_DESTINATIONS"] = f"ORTHANC@127.0.0.1:{self.server.dicom_port}"
        self.processes.append(serve(self.data_dir, self.env, port=self.node_port,
                                    checkout=self.checkout))
        if self.broker:
            self.processes.append(worker(self.data_dir, self.env, checkout=self.checkout))
        for proc in self.processes:
            proc.start()
        return self

    def one(self, paths: list[Path]) -> tuple[float, float]:
        """Seconds from the last C-STORE response to all reports, and to the SR."""
        since = last_change(self.server)
        t0 = send(paths, self.server.dicom_port)
        seen = wait_for_reports(self.server, since, self.wanted)
        return max(seen.values()) - t0, seen["SR"] - t0

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.server.stop()
        if self.redis:
            self.redis.stop()

    def summary(self) -> dict:
        lat = self.latencies
        forwards = forward_seconds(self.server.log_path)[1:]
        return {
            "studies": len(lat),
            "median_s": round(statistics.median(lat), 3),
            "sr_median_s": round(statistics.median(self.sr_latencies), 3),
            "p95_s": round(percentile(lat, 0.95), 3),
            "min_s": round(min(lat), 3),
            "max_s": round(max(lat), 3),
            "plugin_forward_median_s": round(statistics.median(forwards), 3)
            if forwards else None,
        }


def plugin_settings(pairs: list[str]) -> dict:
    """``KEY=JSON`` pairs (``ForwardEachImage=true``) as the plugin section's entries."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = json.loads(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--cores", type=int, default=2, help="pin to this many CPUs (0 = all)")
    parser.add_argument("--broker", action="store_true",
                        help="Celery worker over a real Redis instead of the embedded pipeline")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model registry entry (default: the bundled demo model)")
    parser.add_argument("--ab", action="append", default=[], metavar="KEY=VALUE",
                        help="A/B in one run: a second stack whose node gets these settings "
                        "(environment); every study goes to both, in alternating order")
    parser.add_argument("--ab-checkout", type=Path, default=None, metavar="DIR",
                        help="A/B in one run: the second node runs from this checkout of the "
                        "project (its .venv), e.g. the previous main")
    parser.add_argument("--plugin", action="append", default=[], metavar="KEY=JSON",
                        help="routing plugin setting (MammoDensity section) on every stack, "
                        "e.g. ForwardEachImage=true")
    parser.add_argument("--ab-plugin", action="append", default=[], metavar="KEY=JSON",
                        help="A/B in one run: a routing plugin setting of the second stack "
                        "only, e.g. ForwardEachImage=true")
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "mammo-density-e2e-bench")
    parser.add_argument("--no-summary", action="store_true",
                        help="no summary image (sr_summary_image off): the SR alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cores:
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cpus)  # inherited by every process started below
    args.data.mkdir(parents=True, exist_ok=True)
    all_studies = studies(args.data, args.studies + 1, args.seed)

    work = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
    variants = {"A": {}}
    plugin = {"A": plugin_settings(args.plugin)}
    if args.ab or args.ab_checkout or args.ab_plugin:
        variants["B"] = dict(kv.split("=", 1) for kv in args.ab)
        plugin["B"] = {**plugin["A"], **plugin_settings(args.ab_plugin)}
    stacks = {name: Stack(work / name, args.model_dir, args.broker, extra,
                          summary=not args.no_summary,
                          checkout=args.ab_checkout if name == "B" else None,
                          plugin=plugin[name])
              for name, extra in variants.items()}
    load = [round(os.getloadavg()[0], 2)]
    try:
        for stack in stacks.values():
            stack.start()
        names = list(stacks)
        for i, paths in enumerate(all_studies):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                seconds, sr_seconds = stacks[name].one(paths)
                if i > 0:
                    stacks[name].latencies.append(seconds)
                    stacks[name].sr_latencies.append(sr_seconds)
                print(f"study {i:2d} {name}: {seconds:6.3f} s"
                      f"{' (warm-up)' if i == 0 else ''}", file=sys.stderr)
    finally:
        for stack in stacks.values():
            stack.stop()
    load.append(round(os.getloadavg()[0], 2))
    result: dict = {
        "pipeline": "celery+redis" if args.broker else "embedded",
        "cores": len(os.sched_getaffinity(0)),
        "summary_image": not args.no_summary,
        "load_avg_start_end": load,
        "model_dir": str(args.model_dir) if args.model_dir else "bundled demo model",
        "image_bytes_per_study": sum(p.stat().st_size for p in all_studies[1]),
    }
    from mammo_density.plugin.orthanc.mammo_density_routing import parse_settings

    ab = len(stacks) > 1
    for name, stack in stacks.items():
        # what the plugin itself reads from the configuration this stack gave Orthanc
        plugin = parse_settings(routing_config(stack.node_port, **stack.plugin))
        result[name if ab else "result"] = {**stack.summary(), "settings": variants[name],
                                            "plugin_settings": stack.plugin,
                                            "forward_each_image": plugin.forward_each_image,
                                            "checkout": str(stack.checkout or REPO)}
    if ab:
        a, b = stacks["A"].latencies, stacks["B"].latencies
        result["median_ratio_B_over_A"] = round(statistics.median(b) / statistics.median(a), 3)
        result["paired_median_diff_s"] = round(statistics.median(
            y - x for x, y in zip(a, b, strict=True)), 3)
    shutil.rmtree(work, ignore_errors=True)  # ~1 GB a stack: a shared disk fills up
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
