"""The README's storescu example works, word for word, for compressed files."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from tests.services import REPO, require_binary
from tests.test_listener_serve import Serve, _wait

pytestmark = pytest.mark.services


def _readme_line(prefix: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return shlex.split(line.split("  #")[0])


@pytest.mark.parametrize("syntax", ["jpeg2000", "jpegls", "jpeg-lossless", "rle", "explicit"])
def test_readme_storescu_command_sends_compressed_studies(syntax, tmp_path):
    from mammo_density.synth.generate import generate

    exe = require_binary("storescu")
    words = _readme_line("/usr/bin/storescu")
    assert words[-3:] == ["127.0.0.1", "11112", "/tmp/studies/SYN5-00001"]
    records = generate(tmp_path / "studies", studies=1, seed=5, transfer_syntax=syntax)
    folder = records[0].folder
    serve = Serve(tmp_path / "node", "--receive-only").start()
    try:
        cmd = [exe, *words[1:-2], str(serve.port), str(folder)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _wait(lambda: serve.counts().get("queued", 0) == 1)  # all four views arrived
    finally:
        serve.stop()
