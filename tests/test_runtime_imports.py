"""The node runs without the training stack: `serve`, `worker` and `classify` work in a
process where torch, TensorBoard, onnx, pytest and ruff cannot be imported.

`make serve` and a plain `pip install .` install only the runtime dependencies; these
tests run the runtime commands in a subprocess whose import system refuses those packages
(a ``sys.meta_path`` finder raising ``ModuleNotFoundError``), so an accidental top-level
``import torch`` on the runtime path fails here before it reaches a node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import REPO, echoscu, free_port, require_binary, stop_process, storescu

# Packages of the `train` and `dev` extras that a runtime venv does not have.
BLOCKED = ("torch", "torchmetrics", "torchvision", "tensorboard", "onnx", "pytest", "ruff",
           "hypothesis")

LAUNCHER = f"""
import importlib.abc, sys

BLOCKED = {BLOCKED!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: runtime venv)",
                                      name=name)
        return None

for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Block())

from mammo_density.cli import main
code = main(sys.argv[1:])
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
sys.exit(code)
"""

RUNTIME_MODULES = (
    "mammo_density.commands.serve", "mammo_density.commands.worker",
    "mammo_density.commands.classify", "mammo_density.commands.status",
    "mammo_density.worker.pipeline", "mammo_density.worker.tasks",
    "mammo_density.worker.embedded", "mammo_density.worker.models",
    "mammo_density.worker.sr", "mammo_density.worker.prepcache",
    "mammo_density.plugin.listener", "mammo_density.plugin.outbox",
)


def blocked(*args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, *args]


def test_blocker_really_blocks_torch():
    """The launcher itself: `import torch` fails in it (so the tests below can fail)."""
    code = LAUNCHER.replace("from mammo_density.cli import main", "import torch  # noqa")
    proc = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "blocked: runtime venv" in proc.stderr


def test_runtime_modules_and_help_without_training_stack():
    code = LAUNCHER.replace(
        "from mammo_density.cli import main",
        "import importlib\n"
        f"for m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
        "from mammo_density.cli import main")
    for command in (["--help"], ["serve", "--help"], ["worker", "--help"],
                    ["classify", "--help"]):
        proc = subprocess.run([sys.executable, "-c", code, *command], capture_output=True,
                              text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "usage" in proc.stdout


def test_classify_without_training_stack(tmp_path):
    from mammo_density.synth import generate

    generate(tmp_path / "studies", studies=1, seed=11, size="small", manifest=False)
    proc = subprocess.run(blocked("classify", str(tmp_path / "studies"), "--json"),
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[0])
    assert result["assessable"] is True
    assert result["exam"]["category"] in {"A", "B", "C", "D"}


@pytest.mark.services
def test_serve_echo_and_assess_without_training_stack(tmp_path):
    require_binary("echoscu")
    require_binary("storescu")
    from mammo_density.synth import generate

    records = generate(tmp_path / "studies", studies=1, seed=12, size="small", manifest=False)
    port = free_port()
    data = tmp_path / "node"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_DENSITY_")}
    env.update({"MAMMO_DENSITY_LISTEN_HOST": "127.0.0.1", "MAMMO_DENSITY_MIN_FREE_DISK_MB": "0",
                "MAMMO_DENSITY_STABLE_SECONDS": "30"})
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(blocked("serve", "--port", str(port), "--data-dir", str(data)),
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while echoscu(port).returncode != 0:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            sent = storescu([im.path for im in records[0].standard_images()], port)
            assert sent.returncode == 0, sent.stderr
            status = _wait_done(env, data, deadline=time.monotonic() + 120)
            assert status, log.read_text()[-3000:]
        finally:
            stop_process(proc, timeout=20)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def _wait_done(env: dict[str, str], data: Path, deadline: float) -> bool:
    """Until `status --json` (itself run with the training stack blocked) counts one
    study done."""
    while time.monotonic() < deadline:
        proc = subprocess.run(blocked("status", "--data-dir", str(data), "--json"),
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
        if proc.returncode == 0 and json.loads(proc.stdout)["counts"].get("done") == 1:
            return True
        time.sleep(0.5)
    return False
