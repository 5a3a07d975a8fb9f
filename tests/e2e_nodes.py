"""Real processes for the end-to-end tests and the latency benchmark.

``mammo-density serve`` and ``mammo-density worker`` as subprocesses on free loopback
ports, an Orthanc running the routing plugin that points at the serve process, and helpers
to find the density SR that comes back into Orthanc.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pydicom

from tests.services import REPO, OrthancServer, free_port, stop_process, wait_for_port

SCRIPT = REPO / "plugin" / "orthanc" / "mammo_density_orthanc.py"
NODE_AET = "MAMMODENSITY"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def node_env(data_dir: Path, *, orthanc_dicom_port: int, model_dir: Path | None,
             broker_url: str = "", extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of serve / worker / classify: one configuration for all three."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_DENSITY_")}
    env.update({
        "MAMMO_DENSITY_DATA_DIR": str(data_dir),
        "MAMMO_DENSITY_LISTEN_HOST": "127.0.0.1",
        "MAMMO_DENSITY_AE_TITLE": NODE_AET,
        "MAMMO_DENSITY_MIN_FREE_DISK_MB": "0",
        "MAMMO_DENSITY_STABLE_SECONDS": "20",
        "MAMMO_DENSITY_SR_DESTINATIONS": f"ORTHANC@127.0.0.1:{orthanc_dicom_port}",
        "MAMMO_DENSITY_SR_RETRY_BASE_SECONDS": "0.5",
        "MAMMO_DENSITY_SR_RETRY_MAX_SECONDS": "2",
        "MAMMO_DENSITY_BROKER_URL": broker_url,
        "MAMMO_DENSITY_VISIBILITY_TIMEOUT": "120",
        "MAMMO_DENSITY_TASK_TIME_LIMIT": "60",
        "OMP_NUM_THREADS": "1",
    })
    if model_dir is not None:
        env["MAMMO_DENSITY_MODEL_DIR"] = str(model_dir)
    env.update(extra or {})
    return env


class NodeProcess:
    """A ``mammo-density`` sub-command as a subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 port: int | None = None, checkout: Path | None = None) -> None:
        self.args, self.env, self.log, self.port = args, env, log, port
        # another checkout of the project (its own .venv): benchmarks compare code versions
        self.checkout = Path(checkout) if checkout else None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "ab")  # noqa: SIM115
        python = str(self.checkout / ".venv" / "bin" / "python") if self.checkout \
            else sys.executable
        self.proc = subprocess.Popen([python, "-m", "mammo_density.cli", *self.args],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.checkout or REPO)
        if self.port:
            try:
                wait_for_port(self.port, timeout)
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"{self.args[0]} did not listen:\n{self.tail()}") from None
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout)
            self.proc = None
            self._out.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
            self._out.close()

    def tail(self, n: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def serve(data_dir: Path, env: dict[str, str], port: int | None = None,
          checkout: Path | None = None) -> NodeProcess:
    port = port or free_port()
    return NodeProcess(["serve", "--port", str(port)], {**env}, data_dir.parent /
                       f"serve-{port}.log", port=port, checkout=checkout)


def worker(data_dir: Path, env: dict[str, str], name: str = "w1",
           checkout: Path | None = None) -> NodeProcess:
    return NodeProcess(["worker", "--concurrency", "1"], env,
                       data_dir.parent / f"worker-{name}.log", checkout=checkout)


def routing_config(node_port: int, **section) -> dict:
    return {
        "DicomModalities": {"mammo-density": {"AET": NODE_AET, "Host": "127.0.0.1",
                                              "Port": node_port}},
        "UserMetadata": {"MammoDensity": 4242},
        "MammoDensity": {"Modality": "mammo-density", **section},
    }


def study_srs(server: OrthancServer, study_uid: str, *, modality: str = "SR",
              sop_class: str = COMPREHENSIVE_SR) -> list[str]:
    """Orthanc IDs of the Comprehensive SR instances in the study (or, with
    ``modality``/``sop_class``, of other objects the node writes back)."""
    oid = server.find_study(study_uid)
    if oid is None:
        return []
    out = []
    for series in server.get(f"/studies/{oid}/series").json():
        if series["MainDicomTags"].get("Modality") != modality:
            continue
        for iid in series["Instances"]:
            meta = server.get(f"/instances/{iid}/metadata/SopClassUid").text
            if meta.strip() == sop_class:
                out.append(iid)
    return out


def study_summaries(server: OrthancServer, study_uid: str) -> list[str]:
    """Orthanc IDs of the summary images (Secondary Capture, Modality OT) in the study."""
    return study_srs(server, study_uid, modality="OT", sop_class=SECONDARY_CAPTURE)


def sr_dataset(server: OrthancServer, instance_id: str) -> pydicom.Dataset:
    data = server.get(f"/instances/{instance_id}/file").content
    return pydicom.dcmread(io.BytesIO(data))


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             diagnostics: Iterable[Callable[[], str]] = ()) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    details = "\n\n".join(d() for d in diagnostics)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{details}")


def classify_json(paths: Iterable[Path], env: dict[str, str], timeout: float = 300) -> dict:
    """``mammo-density classify --json`` of one study (one StudyResult JSON per line)."""
    import json

    proc = subprocess.run([sys.executable, "-m", "mammo_density.cli", "classify", "--json",
                           *[str(p) for p in paths]], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(results) == 1, proc.stdout[-3000:]
    return results[0]
