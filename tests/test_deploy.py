"""deploy/: the files an administrator installs, checked against the real programs.

- deploy/orthanc.json and deploy/compose/orthanc.json start a real Orthanc (paths and ports
  swapped for temporary ones) that loads the routing plugin with their MammoDensity section;
- deploy/redis.conf starts a real redis-server with the broker settings it promises;
- the systemd units pass ``systemd-analyze verify`` and run sub-commands the CLI has;
- the environment file template is a valid configuration;
- compose.yaml passes ``docker compose config`` where the Docker client has compose
  (no Docker engine runs on CI: nothing is built or started).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from mammo_density import cli
from mammo_density.config import ConfigError, Settings, load_settings
from tests.services import (
    REPO,
    OrthancServer,
    free_port,
    require_binary,
    storescu,
    wait_for_port,
)

DEPLOY = REPO / "deploy"
SCRIPT = REPO / "plugin" / "orthanc" / "mammo_density_orthanc.py"
UNITS = DEPLOY / "systemd"
BIN = "/opt/mammo-density/venv/bin/mammo-density"


class AuthOrthanc(OrthancServer):
    """The fixture's Orthanc, talking to a server that requires HTTP authentication."""

    password: str = "change-me"

    @property
    def url(self) -> str:
        return f"http://admin:{self.password}@127.0.0.1:{self.http_port}"


def deploy_config(path: Path, workdir: Path) -> dict:
    """The file's configuration with storage, ports and script moved to the test's."""
    cfg = json.loads(path.read_text())
    cfg.update({
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "HttpPort": free_port(),
        "DicomPort": free_port(),
        "PythonScript": str(SCRIPT),
        "RemoteAccessAllowed": False,
    })
    return cfg


def check_orthanc_starts(tmp_path: Path, path: Path, password: str,
                         env: dict[str, str] | None = None) -> dict:
    cfg = deploy_config(path, tmp_path)
    server = AuthOrthanc(tmp_path, SCRIPT, cfg)
    server.password = password
    server.http_port, server.dicom_port = cfg["HttpPort"], cfg["DicomPort"]
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        server.start()
        try:
            assert requests.get(f"http://127.0.0.1:{server.http_port}/system",
                                timeout=5).status_code == 401
            # the router thread starts on ORTHANC_STARTED, a moment after /system answers
            deadline = time.monotonic() + 10
            status = server.get("/mammo-density/status").json()
            while not status["router_alive"] and time.monotonic() < deadline:
                time.sleep(0.1)
                status = server.get("/mammo-density/status").json()
            assert status["router_alive"] is True
            assert status["settings"]["Modality"] == cfg["MammoDensity"]["Modality"]
            assert status["settings"]["Metadata"] == "MammoDensity"
            modalities = server.get("/modalities?expand").json()
            assert cfg["MammoDensity"]["Modality"] in modalities
            assert server.get("/system").json()["DicomAet"] == cfg["DicomAet"]
            return {"status": status, "modalities": modalities, "config": cfg}
        finally:
            server.discard()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.services
def test_orthanc_config_starts_orthanc_with_the_plugin(tmp_path: Path) -> None:
    cfg = json.loads((DEPLOY / "orthanc.json").read_text())
    assert cfg["StableAge"] >= 10 and cfg["UserMetadata"]["MammoDensity"] >= 1024
    assert cfg["PythonScript"].endswith("/mammo_density_orthanc.py")
    assert any(p.endswith("libOrthancPython.so") for p in cfg["Plugins"])
    node = cfg["DicomModalities"][cfg["MammoDensity"]["Modality"]]
    defaults = Settings()
    assert (node["AET"], node["Port"]) == (defaults.ae_title, defaults.listen_port)
    got = check_orthanc_starts(tmp_path / "bare", DEPLOY / "orthanc.json", "s3cret-from-env",
                               env={"ORTHANC_ADMIN_PASSWORD": "s3cret-from-env"})
    assert got["status"]["settings"]["ForwardOnFourViews"] is True


def test_no_default_secret_shipped() -> None:
    """Before: compose fell back to `change-me`, orthanc.json shipped `admin: change-me`."""
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text()
        assert "change-me" not in text.lower(), path
    for name in ("orthanc.json", "compose/orthanc.json"):
        cfg = json.loads((DEPLOY / name).read_text())
        assert cfg["RegisteredUsers"] == {"admin": "${ORTHANC_ADMIN_PASSWORD}"}, name
        assert cfg["AuthenticationEnabled"] is True, name
        assert cfg["DicomAlwaysAllowStore"] is False and cfg["DicomCheckCalledAet"] is True
    dropin = (UNITS / "orthanc.service.d" / "mammo-density.conf").read_text()
    assert "EnvironmentFile=/etc/orthanc/mammo-density-secret.env" in dropin
    assert "ORTHANC_ADMIN_PASSWORD" in dropin and "ExecStartPre=" in dropin


@pytest.mark.services
def test_orthanc_config_stores_only_from_known_modalities(tmp_path: Path) -> None:
    """Before: DicomAlwaysAllowStore let any host store into Orthanc (and so get studies
    routed to the node), and any called AE title was accepted."""
    from tests.mgdata import mg, write

    password = "s3cret-from-env"
    cfg = deploy_config(DEPLOY / "orthanc.json", tmp_path)
    server = AuthOrthanc(tmp_path, SCRIPT, cfg)
    server.password = password
    server.http_port, server.dicom_port = cfg["HttpPort"], cfg["DicomPort"]
    os.environ["ORTHANC_ADMIN_PASSWORD"] = password
    try:
        server.start()
    finally:
        os.environ.pop("ORTHANC_ADMIN_PASSWORD", None)
    try:
        folder = tmp_path / "images"
        write(mg("1.2.826.0.1.3680043.8.498.77", "R", "CC"), folder)
        known = cfg["DicomModalities"][cfg["MammoDensity"]["Modality"]]["AET"]
        stranger = storescu([folder], server.dicom_port, aet=cfg["DicomAet"],
                            calling="STRANGER")
        assert stranger.returncode != 0
        wrong_called = storescu([folder], server.dicom_port, aet="NOT-ORTHANC", calling=known)
        assert wrong_called.returncode != 0
        assert server.get("/instances").json() == []
        ok = storescu([folder], server.dicom_port, aet=cfg["DicomAet"], calling=known)
        assert ok.returncode == 0, ok.stderr
        assert len(server.get("/instances").json()) == 1
        assert requests.get(f"http://admin:wrong@127.0.0.1:{server.http_port}/system",
                            timeout=5).status_code == 401
    finally:
        server.discard()


@pytest.mark.services
def test_compose_orthanc_config_matches_and_starts(tmp_path: Path) -> None:
    bare = json.loads((DEPLOY / "orthanc.json").read_text())
    composed = json.loads((DEPLOY / "compose" / "orthanc.json").read_text())
    assert composed["MammoDensity"] == bare["MammoDensity"]
    assert composed["DicomModalities"]["mammo-density"]["Host"] == "listener"
    differ = {k for k in bare.keys() | composed.keys() if bare.get(k) != composed.get(k)}
    assert differ == {"DicomModalities"}
    got = check_orthanc_starts(tmp_path / "compose", DEPLOY / "compose" / "orthanc.json",
                               "s3cret-from-env", env={"ORTHANC_ADMIN_PASSWORD": "s3cret-from-env"})
    assert got["modalities"]["mammo-density"]["Host"] == "listener"


REDIS_SECRET = "/etc/redis/mammo-density-secret.conf"


def _redis_conf(tmp_path: Path, secret: Path) -> Path:
    """deploy/redis.conf with its password file moved to the test's."""
    text = (DEPLOY / "redis.conf").read_text()
    assert f"include {REDIS_SECRET}" in text
    conf = tmp_path / "redis.conf"
    conf.write_text(text.replace(f"include {REDIS_SECRET}", f"include {secret}"))
    return conf


@pytest.mark.services
def test_redis_conf_starts_a_durable_broker_with_a_password(tmp_path: Path) -> None:
    """Before: the shipped redis.conf had no password (`requirepass` commented out)."""
    exe = require_binary("redis-server")
    cli_exe = require_binary("redis-cli")
    secret = tmp_path / "secret.conf"
    conf = _redis_conf(tmp_path, secret)
    # Without the password file Redis does not start at all.
    refused = subprocess.run([exe, str(conf), "--port", str(free_port()), "--dir",
                              str(tmp_path), "--bind", "127.0.0.1"], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0
    password = "0123456789abcdef" * 4
    secret.write_text(f"requirepass {password}\n")
    port = free_port()
    proc = subprocess.Popen([exe, str(conf), "--port", str(port),
                             "--dir", str(tmp_path), "--bind", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, 10)

        def run(*args: str, auth: bool = True) -> str:
            env = {**os.environ, "REDISCLI_AUTH": password} if auth else \
                {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
            return subprocess.run([cli_exe, "-p", str(port), *args], capture_output=True,
                                  text=True, timeout=10, env=env).stdout

        def get(key: str) -> str:
            out = run("CONFIG", "GET", key).split()
            return out[1] if len(out) > 1 else ""

        assert "NOAUTH" in run("PING", auth=False)
        assert run("PING").strip() == "PONG"
        assert get("requirepass") == password
        assert get("maxmemory-policy") == "noeviction"
        assert get("appendonly") == "yes"
        assert get("appendfsync") == "everysec"
        assert get("protected-mode") == "yes"
        # The node talks to it with the password in the broker URL.
        import redis

        url = f"redis://:{password}@127.0.0.1:{port}/0"
        assert redis.Redis.from_url(url).ping() is True
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://:wrong@127.0.0.1:{port}/0").ping()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        out[key] = value
    return out


def test_env_example_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    values = env_file(DEPLOY / "mammo-density.env.example")
    fields = set(Settings.model_fields)
    for key in values:
        assert key.startswith("MAMMO_DENSITY_"), key
        assert key.removeprefix("MAMMO_DENSITY_").lower() in fields, f"{key}: no such setting"
    for key in list(os.environ):
        if key.startswith("MAMMO_DENSITY_"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        if value:
            monkeypatch.setenv(key, value)
    # The template's Redis password is a placeholder: refused until it is replaced.
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings()
    broker = values["MAMMO_DENSITY_BROKER_URL"]
    assert "REPLACE" in broker
    monkeypatch.setenv("MAMMO_DENSITY_BROKER_URL", re.sub(r":[^:@/]+@", ":5ecret@", broker))
    settings = load_settings()
    assert settings.broker_url.startswith("redis://:5ecret@")
    assert [str(d) for d in settings.sr_destinations] == ["ORTHANC@127.0.0.1:4242"]
    assert str(settings.data_dir) == "/var/lib/mammo-density"
    orthanc = json.loads((DEPLOY / "orthanc.json").read_text())
    assert settings.allowed_aets == [orthanc["DicomAet"]]
    assert settings.sr_destinations[0].port == orthanc["DicomPort"]
    assert settings.listen_port == orthanc["DicomModalities"]["mammo-density"]["Port"]


def _unit_lines(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


@pytest.mark.parametrize(("unit", "command"), [
    ("mammo-density-serve.service", "serve"),
    ("mammo-density-worker@.service", "worker"),
])
def test_systemd_units_run_existing_commands(unit: str, command: str) -> None:
    lines = _unit_lines(UNITS / unit)
    exec_start = [v for k, v in lines if k == "ExecStart"]
    assert len(exec_start) == 1
    argv = exec_start[0].split()
    assert argv[0] == BIN and argv[1] == command
    assert command in cli.COMMANDS, f"`mammo-density {command}` is not a CLI command"
    env_files = [v for k, v in lines if k == "EnvironmentFile"]
    assert "/etc/mammo-density/mammo-density.env" in env_files
    assert ("User", "mammo-density") in lines


@pytest.mark.services
def test_systemd_units_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    mammo = shutil.which("mammo-density") or str(REPO / ".venv" / "bin" / "mammo-density")
    for unit in ("mammo-density-serve.service", "mammo-density-worker@.service"):
        text = (UNITS / unit).read_text().replace(BIN, mammo)
        (tmp_path / unit).write_text(text)
    (tmp_path / "mammo-density-worker@cpu1.service").write_text(
        (tmp_path / "mammo-density-worker@.service").read_text())
    units = ["mammo-density-serve.service", "mammo-density-worker@cpu1.service"]
    debian_orthanc = Path("/lib/systemd/system/orthanc.service")
    if debian_orthanc.exists():
        shutil.copy(debian_orthanc, tmp_path / "orthanc.service")
        shutil.copytree(UNITS / "orthanc.service.d", tmp_path / "orthanc.service.d")
        units.append("orthanc.service")
    proc = subprocess.run([exe, "verify", *units], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert not re.search(r"Unknown (key|section)|ignoring|Invalid", output), output


@pytest.mark.services
def test_compose_file(tmp_path: Path) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    fields = set(Settings.model_fields)
    for key in set(re.findall(r"\b(MAMMO_DENSITY_[A-Z_]+)\b", text)):
        assert key.removeprefix("MAMMO_DENSITY_").lower() in fields, f"{key}: no such setting"
    for service in ("redis:", "orthanc:", "listener:", "worker-cpu:", "worker-gpu:"):
        assert f"\n  {service}" in text
    assert "driver: nvidia" in text and "capabilities: [gpu]" in text
    for name in ("Dockerfile", "Dockerfile.orthanc", "redis.conf", "compose/orthanc.json"):
        assert (DEPLOY / name).exists(), name
    # Secrets are required (`${VAR:?message}`), never defaulted.
    assert re.search(r"ORTHANC_ADMIN_PASSWORD: \$\{ORTHANC_ADMIN_PASSWORD:\?[^}]+\}", text)
    assert re.search(r"MAMMO_DENSITY_BROKER_URL: \"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:",
                     text)
    assert re.search(r"REDIS_PASSWORD: \$\{REDIS_PASSWORD:\?[^}]+\}", text)
    assert ":-" not in text  # no ${VAR:-default} anywhere
    assert "mammo-density-secret.conf" in text and "REDISCLI_AUTH" in text
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin: `docker compose config` not run")
    proc = subprocess.run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config",
                           "--format", "json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ORTHANC_ADMIN_PASSWORD": "x",
                               "REDIS_PASSWORD": "y"})
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert set(config["services"]) >= {"redis", "orthanc", "listener", "worker-cpu"}
    gpu = config["services"].get("worker-gpu")
    if gpu is not None:
        devices = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia"
