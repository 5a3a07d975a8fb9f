"""Real services for tests: Redis, PostgreSQL, Orthanc with its Python plugin, dcmtk and
dicom3tools.

Each server starts on free loopback ports in a temporary directory and stops afterwards.
Under CI (``CI=true``) a missing program is a test failure, not a skip: a skip there would
hide a broken install step.

Every program outside the Python environment goes through :func:`require_binary`, which
fails a test that does not carry ``@pytest.mark.services``: so ``pytest -m "not
services"`` (the fast unit run) provably needs no service, and a new test that starts one
cannot forget the marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
import requests

ORTHANC_PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _search_path() -> str:
    """PATH without the virtual environment's bin folder: pynetdicom installs scripts
    named ``storescu``/``echoscu`` there, which would shadow dcmtk's programs."""
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    parts = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join(p for p in parts if p and Path(p).resolve() != venv_bin)


CURRENT_TEST: pytest.Item | None = None  # set by conftest.py for the running test


def _require_services_marker(what: str) -> None:
    """Fail the running test unless it carries ``@pytest.mark.services``."""
    item = CURRENT_TEST
    if item is not None and item.get_closest_marker("services") is None:
        pytest.fail(f"{item.nodeid} needs {what}, a real service: mark it "
                    "@pytest.mark.services")


def _unavailable(message: str) -> NoReturn:
    """A service the test needs is missing: a failure under CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Path of a program the test needs; fail under CI, skip elsewhere, if it is missing.

    A test (or a fixture it uses) that needs a program must be marked ``services``."""
    _require_services_marker(name)
    path = shutil.which(name, path=_search_path())
    if path is None:
        _unavailable(f"{name} is not installed (run `make test`, which installs it)")
    return path


def require_testdata(*parts: str) -> Path:
    """A file under ../shared/testdata; skip with a reason where ../shared is absent."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        if in_ci():
            pytest.fail(f"{path} missing: CI must have ../shared beside the clone")
        pytest.skip(f"{path} not present (../shared is not beside this clone)")
    return path


# Under pytest-xdist each worker takes its ports from a block of its own, below Linux's
# ephemeral range (32768-60999): the kernel's bind(0) picks a random free port, so two
# workers each starting a server could both be handed the same port in the moment
# between asking and binding. Outside xdist (a plain pytest run, the benchmarks) the
# kernel picks as before.
_PORT_BASE, _PORT_BLOCK, _PORT_WORKERS = 20000, 800, 15
_next_port: int | None = None


def _worker_block() -> int | None:
    """The xdist worker's number (gw0 -> 0), or None outside xdist or past the blocks."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    if name.startswith("gw") and name[2:].isdigit() and int(name[2:]) < _PORT_WORKERS:
        return int(name[2:])
    return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (and, under xdist, that no other
    worker will be given)."""
    global _next_port
    block = _worker_block()
    if block is not None:
        first = _PORT_BASE + block * _PORT_BLOCK
        if _next_port is None:  # a different start per process: ports of an earlier
            _next_port = first + os.getpid() % _PORT_BLOCK  # run may be in TIME_WAIT
        for _ in range(_PORT_BLOCK):
            port = _next_port
            _next_port = first + (_next_port - first + 1) % _PORT_BLOCK
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# --------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A throw-away ``redis-server`` on a loopback port, without persistence."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = require_binary("redis-server")
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------


def _postgres_bindir() -> Path:
    """The folder of PostgreSQL's ``initdb`` and ``postgres``: on PATH, or Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version); fail under CI, skip elsewhere,
    like :func:`require_binary`."""
    found = shutil.which("initdb", path=_search_path())
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name
                      .isdigit() else 0)
    if versions:
        return versions[-1].parent
    return Path(require_binary("initdb")).parent  # fails or skips with the usual message


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL cluster on a loopback port: ``initdb`` in a temporary
    folder, one superuser with trust authentication on 127.0.0.1 only, fsync off.

    PostgreSQL refuses to run as root; under root (CI) the cluster belongs to the
    ``postgres`` account that Debian's package creates, and the programs run as it."""

    user: str = "mammo"
    port: int = 0
    proc: subprocess.Popen | None = None
    workdir: Path | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        # setpriv execs (no parent left in between): stopping the Popen stops PostgreSQL
        return [require_binary("setpriv"), "--reuid=postgres", "--regid=postgres",
                "--init-groups", *argv]

    def start(self) -> PostgresServer:
        import tempfile

        _require_services_marker("PostgreSQL")
        bindir = _postgres_bindir()
        self.port = self.port or free_port()
        # not under pytest's tmp_path: its 0700 parents would shut the postgres account out
        self.workdir = Path(tempfile.mkdtemp(prefix="md-postgres-"))
        data, sockets = self.workdir / "data", self.workdir / "run"
        sockets.mkdir()
        if os.geteuid() == 0:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.workdir, ignore_errors=True)
                _unavailable("PostgreSQL does not run as root and there is no `postgres` "
                             "account to run it as (Debian's postgresql package creates it)")
            for path in (self.workdir, sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(self._as_owner(
            [str(bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
             "--no-sync", "--encoding=UTF8", "--locale=C"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.proc = subprocess.Popen(self._as_owner(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-k", str(sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, 30)
        return self

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
            stop_process(self.proc)
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# --------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------


@dataclass
class OrthancServer:
    """Orthanc with the Python plugin, configured from a JSON file in ``workdir``.

    ``script`` is the Python plugin script to load; ``extra`` is merged into the
    configuration (e.g. ``DicomModalities`` or a ``MammoDensity`` section).
    """

    workdir: Path
    script: Path
    extra: dict = field(default_factory=dict)
    aet: str = "ORTHANC"
    http_port: int = 0
    dicom_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def config(self) -> dict:
        cfg = {
            "Name": "mammo-density-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "HttpsVerifyPeers": False,
            "Plugins": [str(ORTHANC_PYTHON_PLUGIN)],
            "PythonScript": str(self.script.resolve()),
            "PythonVerbose": False,
            "StableAge": 2,
            "SaveJobs": False,
        }
        cfg.update(self.extra)
        return cfg

    def start(self, timeout: float = 30.0) -> OrthancServer:
        exe = require_binary("Orthanc")
        if not ORTHANC_PYTHON_PLUGIN.exists():
            _unavailable(f"{ORTHANC_PYTHON_PLUGIN} missing (Debian package orthanc-python)")
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._stdout = open(self.workdir / "orthanc.stdout", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [exe, f"--logfile={self.log_path}", str(self.config_path)],
            stdout=self._stdout, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.proc.returncode}; log:\n{self.tail_log()}"
                )
            try:
                if requests.get(self.url + "/system", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError(f"Orthanc did not answer in {timeout} s:\n{self.tail_log()}")
        plugins = requests.get(self.url + "/plugins", timeout=5).json()
        if "python" not in plugins:
            raise RuntimeError(f"Orthanc runs without the python plugin:\n{self.tail_log()}")
        wait_for_port(self.dicom_port, 10)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15)
            self.proc = None
            self._stdout.close()

    def discard(self) -> None:
        """End a throwaway instance at teardown: SIGKILL, since nothing of it is used again
        (a graceful SIGTERM takes Orthanc about 3.5 s, dozens of times per test run). Tests
        that stop a PACS on purpose use :meth:`stop`."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
            self._stdout.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail_log(self, n: int = 60) -> str:
        text = ""
        for p in (self.log_path, self.workdir / "orthanc.stdout"):
            if p.exists():
                text += "\n".join(p.read_text(errors="replace").splitlines()[-n:]) + "\n"
        return text

    # REST helpers ---------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 10), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc's ID of a study, looked up by StudyInstanceUID."""
        found = self.post("/tools/lookup", data=study_uid).json()
        for item in found:
            if item.get("Type") == "Study":
                return item["ID"]
        return None

    def study_instances(self, study_uid: str) -> list[dict]:
        """Simplified tags of every instance of a study (empty if unknown)."""
        oid = self.find_study(study_uid)
        if oid is None:
            return []
        out = []
        for inst in self.get(f"/studies/{oid}/instances").json():
            out.append(self.get(f"/instances/{inst['ID']}/simplified-tags").json())
        return out


# --------------------------------------------------------------------------------------
# dcmtk / dicom3tools
# --------------------------------------------------------------------------------------


def storescu(paths: Iterable[Path | str], port: int, aet: str = "MAMMODENSITY",
             calling: str = "STORESCU", host: str = "127.0.0.1",
             extra: Sequence[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """Send files or folders with dcmtk ``storescu`` (``+sd +r`` for folders)."""
    exe = require_binary("storescu")
    cmd = [exe, "-aet", calling, "-aec", aet, "+sd", "+r", *extra, host, str(port)]
    cmd += [str(p) for p in paths]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, aet: str = "MAMMODENSITY", calling: str = "ECHOSCU",
            host: str = "127.0.0.1", timeout: float = 30) -> subprocess.CompletedProcess:
    exe = require_binary("echoscu")
    return subprocess.run([exe, "-aet", calling, "-aec", aet, host, str(port)],
                          capture_output=True, text=True, timeout=timeout)


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Run dicom3tools ``dciodvfy``; return (error lines, warning lines)."""
    exe = require_binary("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


def dsr2html(path: Path | str) -> subprocess.CompletedProcess:
    """dcmtk's HTML rendering of an SR (what a person sees in an SR viewer)."""
    exe = require_binary("dsr2html")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)


def dsrdump(path: Path | str) -> subprocess.CompletedProcess:
    exe = require_binary("dsrdump")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
