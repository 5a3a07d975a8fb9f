"""Fault campaign: the whole node under real faults, every study checked at the PACS.

Runs real processes: ``mammo-density serve`` (Celery pipeline), one ``mammo-density
worker``, ``redis-server`` without persistence, dcmtk ``storescp`` as the PACS receiving
the SRs. Studies are sent by a pynetdicom sender that behaves like a modality's queue
(re-sends whatever was not answered 0x0000, every ``--sender-retry`` seconds), over TLS
unless ``--no-tls``. Phases, each with its own studies:

A. ``serve`` SIGKILLed mid-send, down for 2 x ``stable_seconds``, restarted.
B. Redis restarted without persistence while studies wait in the queue (worker stopped
   first so the messages are in Redis), then the worker started again.
C. The PACS down for ``--pacs-down`` seconds (default 300) while studies are assessed.
D. ``--idle`` TCP connections that never speak, held open while a (TLS) client sends.

Pass criteria, per study: exactly one SR received by the PACS, the study ``done`` at
revision 1 with a complete (non-partial) result, and the SR at the PACS within
``stable_seconds + 60`` s of the phase's recovery (restart / worker back / PACS back /
sending started). Exit status 0 when every study passes.

    python -m benchmarks.faults                       # defaults: stable 10 s, PACS down 300 s
    python -m benchmarks.faults --pacs-down 30 --json # a shorter run

The SR outbox's longest retry wait is set to ``stable_seconds`` for the run (setting
``sr_retry_max_seconds``; its default, 600 s, would alone exceed the bound after a long
PACS outage).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE

from tests.services import REPO, RedisServer, free_port, require_binary, wait_for_port

MG_PRES = "1.2.840.10008.5.1.4.1.1.1.2"


@dataclass
class Study:
    phase: str
    uid: str
    files: list[Path]
    recovery_at: float | None = None
    sr_times: list[float] = field(default_factory=list)


class Node:
    """serve + worker + Redis + storescp, each restartable."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.data = work / "data"
        self.port = free_port()
        self.pacs_port = free_port()
        self.pacs_dir = work / "pacs"
        self.pacs_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(work / "redis")
        self.serve_proc: subprocess.Popen | None = None
        self.worker_proc: subprocess.Popen | None = None
        self.pacs_proc: subprocess.Popen | None = None
        self.cert = self.key = None
        if args.tls:
            self.key, self.cert = work / "key.pem", work / "cert.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-days", "1", "-subj", "/CN=localhost", "-keyout", str(self.key),
                            "-out", str(self.cert)], check=True, capture_output=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MAMMO_DENSITY_CONFIG", None)
        env.update({
            "MAMMO_DENSITY_LISTEN_HOST": "127.0.0.1",
            "MAMMO_DENSITY_MIN_FREE_DISK_MB": "0",
            "MAMMO_DENSITY_STABLE_SECONDS": str(self.args.stable),
            "MAMMO_DENSITY_BROKER_URL": self.redis.url,
            "MAMMO_DENSITY_DATA_DIR": str(self.data),
            "MAMMO_DENSITY_SR_DESTINATIONS": f"PACS@127.0.0.1:{self.pacs_port}",
            "MAMMO_DENSITY_SR_RETRY_MAX_SECONDS": str(self.args.stable),
            "MAMMO_DENSITY_ORT_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        })
        if self.args.tls:
            env["MAMMO_DENSITY_TLS_CERT"] = str(self.cert)
            env["MAMMO_DENSITY_TLS_KEY"] = str(self.key)
        return env

    def _log(self, name: str):
        return open(self.work / f"{name}.log", "ab")

    def start_serve(self) -> None:
        self.serve_proc = subprocess.Popen(
            [sys.executable, "-m", "mammo_density.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data)], cwd=REPO, env=self.env(),
            stdout=self._log("serve"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, 60)

    def kill_serve(self) -> None:
        if self.serve_proc is not None:
            self.serve_proc.send_signal(signal.SIGKILL)
            self.serve_proc.wait(10)
            self.serve_proc = None

    def start_worker(self) -> None:
        self.worker_proc = subprocess.Popen(
            [sys.executable, "-m", "mammo_density.cli", "worker", "--concurrency", "1",
             "--queues", "cpu,gpu", "--hostname", f"faults{time.time():.0f}@local"],
            cwd=REPO, env=self.env(), stdout=self._log("worker"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def stop_worker(self) -> None:
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            os.killpg(self.worker_proc.pid, signal.SIGTERM)
            try:
                self.worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker_proc.pid, signal.SIGKILL)
                self.worker_proc.wait(10)
        self.worker_proc = None

    def start_pacs(self) -> None:
        self.pacs_proc = subprocess.Popen(
            [require_binary("storescp"), "-aet", "PACS", "+uf", "-od", str(self.pacs_dir),
             str(self.pacs_port)], stdout=self._log("pacs"), stderr=subprocess.STDOUT)
        wait_for_port(self.pacs_port, 20)

    def stop_pacs(self) -> None:
        if self.pacs_proc is not None:
            self.pacs_proc.terminate()
            self.pacs_proc.wait(10)
            self.pacs_proc = None

    def stop_all(self) -> None:
        if self.serve_proc is not None and self.serve_proc.poll() is None:
            self.serve_proc.terminate()
            try:
                self.serve_proc.wait(30)
            except subprocess.TimeoutExpired:
                self.serve_proc.kill()
        self.stop_worker()
        self.stop_pacs()
        self.redis.stop()

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.args.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cert))
        ctx.check_hostname = False
        return ctx


class Sender:
    """A modality's send queue: re-sends what was not answered 0x0000 until it was."""

    def __init__(self, node: Node, files: list[Path], retry: float, pace: float = 0.0) -> None:
        self.node = node
        self.todo = list(files)
        self.retry = retry
        self.pace = pace
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sender:
        self.thread.start()
        return self

    def _send_some(self) -> None:
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
            ae.add_requested_context(MG_PRES, ts)
        ctx = self.node.tls_context()
        assoc = ae.associate("127.0.0.1", self.node.port, ae_title="MAMMODENSITY",
                             tls_args=(ctx, None) if ctx else None)
        if not assoc.is_established:
            raise ConnectionError("association not established")
        try:
            while self.todo:
                path = self.todo[0]
                status = assoc.send_c_store(pydicom.dcmread(path))
                if not assoc.is_established or "Status" not in status:
                    raise ConnectionError("association lost mid-send")
                if int(status.Status) != 0:
                    raise RuntimeError(f"status 0x{int(status.Status):04X}")
                self.todo.pop(0)
                if self.pace:
                    time.sleep(self.pace)
        finally:
            if assoc.is_established:
                assoc.release()

    def _run(self) -> None:
        while self.todo:
            try:
                self._send_some()
            except Exception as err:  # node down, refused: the queue waits and retries
                self.errors.append(f"{type(err).__name__}: {err}")
                time.sleep(self.retry)

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.todo


def make_studies(work: Path, count: int, seed: int) -> list[list[Path]]:
    from mammo_density.synth import generate

    records = generate(work / f"synth-{seed}", studies=count, seed=seed, size="small",
                       manifest=False)
    return [sorted(Path(im.path) for im in rec.images) for rec in records]


def pacs_srs(folder: Path, modality: str = "SR") -> dict[str, list[tuple[str, float]]]:
    """Study UID -> [(SOP Instance UID, file time)] of the objects of ``modality`` the PACS
    received (SR: the density reports; OT: the summary images sent beside them)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for path in folder.iterdir():
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("Modality", "")) != modality:
            continue
        out.setdefault(str(ds.StudyInstanceUID), []).append(
            (str(ds.SOPInstanceUID), path.stat().st_mtime))
    return out


def state_of(node: Node) -> dict[str, dict]:
    from mammo_density.plugin.state import StateDB

    db = StateDB(node.data / "state.sqlite3")
    try:
        return {s["study_uid"]: s for s in db.studies()}
    finally:
        db.close()


def wait_delivered(node: Node, studies: list[Study], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pacs_srs(node.pacs_dir)
        if all(s.uid in got for s in studies):
            return
        time.sleep(0.5)


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="md-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    node = Node(work, args)
    studies: list[Study] = []
    bound = args.stable + 60.0
    timeline: list[str] = []

    def note(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        timeline.append(line)
        print(line, flush=True)

    def new(phase: str, count: int, seed: int) -> list[Study]:
        made = [Study(phase, str(pydicom.dcmread(f[0], stop_before_pixels=True)
                                 .StudyInstanceUID), f)
                for f in make_studies(work, count, seed)]
        studies.extend(made)
        return made

    idle: list[socket.socket] = []
    try:
        node.redis.start()
        node.start_pacs()
        node.start_worker()
        node.start_serve()
        note(f"node up: serve :{node.port} ({'TLS' if args.tls else 'plain'}), PACS "
             f":{node.pacs_port}, Redis {node.redis.url}, work dir {work}")

        # A: SIGKILL of serve mid-send, down 2 x stable_seconds
        batch = new("A", args.studies, 101)
        files = [f for s in batch for f in s.files]
        sender = Sender(node, files, args.sender_retry, pace=0.3).start()
        while len(sender.todo) > 2:  # the last study half sent: killed mid-study
            time.sleep(0.05)
        node.kill_serve()
        note(f"A: serve SIGKILLed after {len(files) - len(sender.todo)} of {len(files)} "
             f"images; down {2 * args.stable:g} s")
        time.sleep(2 * args.stable)
        node.start_serve()
        recovered = time.time()
        note("A: serve restarted")
        for s in batch:
            s.recovery_at = recovered
        if not sender.join(bound):
            note(f"A: sender still has {len(sender.todo)} images ({sender.errors[-1:]})")
        wait_delivered(node, batch, bound)

        # B: Redis restarted without persistence while studies wait in the queue
        node.stop_worker()
        batch = new("B", args.studies, 202)
        sender = Sender(node, [f for s in batch for f in s.files], args.sender_retry).start()
        sender.join(bound)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline and not all(
                state_of(node).get(s.uid, {}).get("status") == "queued" for s in batch):
            time.sleep(0.2)
        node.redis.stop()
        node.redis.start()
        note("B: Redis restarted without persistence (queued messages lost)")
        node.start_worker()
        recovered = time.time()
        note("B: worker started again")
        for s in batch:
            s.recovery_at = recovered
        wait_delivered(node, batch, bound)

        # C: the PACS down
        node.stop_pacs()
        note(f"C: PACS down for {args.pacs_down:g} s")
        batch = new("C", args.studies, 303)
        sender = Sender(node, [f for s in batch for f in s.files], args.sender_retry).start()
        sender.join(bound)
        time.sleep(args.pacs_down)
        node.start_pacs()
        recovered = time.time()
        note("C: PACS back")
        for s in batch:
            s.recovery_at = recovered
        wait_delivered(node, batch, bound)

        # D: idle TCP connections held open while a (TLS) client sends
        refused = 0
        for _ in range(args.idle):
            try:
                idle.append(socket.create_connection(("127.0.0.1", node.port), timeout=5))
            except OSError:  # the node no longer accepts connections: a finding
                refused += 1
        note(f"D: {len(idle)} idle TCP connections open ({refused} could not even "
             f"connect); sending over {'TLS' if args.tls else 'plain TCP'}")
        batch = new("D", args.studies, 404)
        started = time.time()
        for s in batch:
            s.recovery_at = started
        sender = Sender(node, [f for s in batch for f in s.files], args.sender_retry).start()
        if not sender.join(bound):
            note(f"D: sender still has {len(sender.todo)} images ({sender.errors[-1:]})")
        wait_delivered(node, batch, bound)
        time.sleep(args.stable + 2)  # anything late or duplicate would show up now
    finally:
        for sock in idle:
            sock.close()
        node.stop_all()

    got = pacs_srs(node.pacs_dir)
    others = {}
    for path in node.pacs_dir.iterdir():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("Modality", "")) != "SR":
            others.setdefault(str(ds.StudyInstanceUID), []).append(str(ds.SOPInstanceUID))
    states = state_of(node)
    rows = []
    for s in studies:
        srs = got.get(s.uid, [])
        row = states.get(s.uid, {})
        result = row.get("result") or {}
        first = min((t for _, t in srs), default=None)
        delay = None if first is None or s.recovery_at is None else first - s.recovery_at
        ok = (len(srs) == 1 and row.get("status") == "done" and row.get("revision") == 1
              and result.get("partial") is False and delay is not None and delay <= bound)
        rows.append({"phase": s.phase, "study": s.uid[-12:], "srs_at_pacs": len(srs),
                     "distinct_srs": len({u for u, _ in srs}),
                     "other_objects_at_pacs": len(others.get(s.uid, [])),
                     "status": row.get("status"),
                     "revision": row.get("revision"), "partial": result.get("partial"),
                     "sr_after_recovery_s": None if delay is None else round(delay, 1),
                     "ok": ok})
    return {"stable_seconds": args.stable, "pacs_down_s": args.pacs_down, "idle": args.idle,
            "tls": args.tls, "bound_s": bound, "passed": all(r["ok"] for r in rows),
            "studies": rows, "timeline": timeline, "work_dir": str(work)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stable", type=float, default=10.0, help="stable_seconds of the node")
    p.add_argument("--pacs-down", type=float, default=300.0, help="PACS outage, s")
    p.add_argument("--idle", type=int, default=20, help="idle TCP connections in phase D")
    p.add_argument("--studies", type=int, default=2, help="studies per phase")
    p.add_argument("--sender-retry", type=float, default=5.0,
                   help="the sender's wait before re-sending after a failure, s")
    p.add_argument("--no-tls", dest="tls", action="store_false", help="plain TCP")
    p.add_argument("--workdir", help="keep processes' logs and files here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in report["studies"]:
            print(" ".join(f"{k}={v}" for k, v in r.items()))
        print("PASSED" if report["passed"] else "FAILED", f"(bound {report['bound_s']:g} s)")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
