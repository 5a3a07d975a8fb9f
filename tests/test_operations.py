"""Operations as a new administrator meets them (issue 16): file modes under umask 022, the
data-directory lock, the "no SR destination" warning, and `status` on a full or read-only
disk, on a wrong data directory and into a closed pipe. Real `serve` subprocesses, real
dcmtk storescu, real file systems (a size-limited tmpfs where root may mount one)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mammo_density.config import load_settings
from mammo_density.plugin.outbox import Outbox
from mammo_density.plugin.state import StateDB
from tests.services import REPO, free_port, storescu
from tests.test_listener_serve import Serve, _wait

pytestmark = pytest.mark.services


def _cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_DENSITY_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "mammo_density.cli", *args], env=full,
                          cwd=REPO, timeout=60, **({"capture_output": True, "text": True} | kw))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_phi_files_private_under_umask_022_and_one_serve_per_data_dir(tmp_path):
    """Before: with umask 022 spooled images, SRs and every .sqlite3 file were world-readable,
    and a second `serve` could share the data directory."""
    from mammo_density.synth import generate
    from tests.models import cached_registry_entry

    model = cached_registry_entry(tmp_path / "models", seed=3)
    record = generate(tmp_path / "synth", studies=1, seed=5, size="small")[0]
    data = tmp_path / "data"
    serve = Serve(data, stable=20.0)
    serve.env.update({"MAMMO_DENSITY_MODEL_DIR": str(model), "OMP_NUM_THREADS": "1"})
    serve.env.pop("MAMMO_DENSITY_SR_DESTINATIONS", None)
    old = os.umask(0o022)
    try:
        serve.start()
    finally:
        os.umask(old)
    try:
        assert storescu([Path(p) for p in record.paths], serve.port).returncode == 0
        _wait(lambda: serve.counts()["done"] == 1, timeout=120)
        _wait(lambda: any((data / "outbox").glob("*.dcm")), timeout=30)
        # A second serve on the same data directory stops with a clear error.
        second = _cli("serve", "--port", str(free_port()), "--data-dir", str(data),
                      env={"MAMMO_DENSITY_LISTEN_HOST": "127.0.0.1"})
        assert second.returncode == 1
        assert "in use by another `mammo-density serve`" in second.stderr
        assert f"pid {serve.proc.pid}" in second.stderr
        # `status` says where the SRs wait when no destination is set.
        status = serve.status()
        assert any("no SR destination" in w and str(data / "outbox") in w
                   for w in status["warnings"])
    finally:
        assert serve.stop() == 0
    log = serve.log.read_text()
    assert "no SR destination configured" in log and str(data / "outbox") in log
    assert _mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    dirs = [p for p in data.rglob("*") if p.is_dir()]
    assert any(p.suffix == ".dcm" and "spool" in p.parts for p in files)
    assert any(p.suffix == ".dcm" and "outbox" in p.parts for p in files)
    assert any(p.name.endswith(".sqlite3") for p in files)
    loose = {str(p.relative_to(data)): oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert not loose, f"files readable by others: {loose}"
    loose = {str(p.relative_to(data)): oct(_mode(p)) for p in dirs if _mode(p) & 0o077}
    assert not loose, f"folders open to others: {loose}"
    # The lock went with the process: a new serve starts.
    again = Serve(data, stable=20.0).start()
    assert again.stop() == 0


def test_status_on_a_data_dir_without_state_database(tmp_path):
    """Before: a wrong --data-dir looked like an idle node (exit 0)."""
    empty = tmp_path / "not-the-node"
    empty.mkdir()
    out = _cli("status", "--data-dir", str(empty))
    assert out.returncode == 1
    assert "has no state database" in out.stderr and str(empty) in out.stderr
    assert list(empty.iterdir()) == []  # status created nothing
    out = _cli("status", "--json", "--data-dir", str(tmp_path / "absent"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert not (tmp_path / "absent").exists()


def _node_files(data: Path) -> None:
    """A data directory as `serve` leaves it: state and outbox databases."""
    settings = load_settings(None, data_dir=data)
    StateDB(settings.state_db).close()
    Outbox(settings)


def test_status_into_a_closed_pipe(tmp_path):
    """Before: `status | head` ended in BrokenPipeError with a traceback."""
    data = tmp_path / "data"
    _node_files(data)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before status writes a byte
    try:
        out = _cli("status", "--data-dir", str(data), stdout=write, stderr=subprocess.PIPE,
                   text=True, capture_output=False)
    finally:
        os.close(write)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) for a size-limited tmpfs")
    where = tmp_path / "fs"
    where.mkdir()
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_status_on_a_full_and_a_read_only_disk(small_fs):
    """Before: `status` opened its databases for writing and crashed with a traceback."""
    data = small_fs / "data"
    _node_files(data)
    fd = os.open(small_fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(small_fs).free < 65536
    before = sorted(p.name for p in data.iterdir())
    out = _cli("status", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    assert "studies:" in out.stdout and "Traceback" not in out.stderr
    assert sorted(p.name for p in data.iterdir()) == before
    proc = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    out = _cli("status", "--json", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    assert '"counts"' in out.stdout and "Traceback" not in out.stderr
