"""Configuration: TOML file, environment, command line, errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mammo_density.config import ConfigError, Destination, load_settings


def test_defaults_serve_one_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = load_settings()
    assert s.embedded
    assert s.listen_port == 11112
    assert s.data_dir == tmp_path / "mammo-density"
    assert s.spool_dir == s.data_dir / "spool"
    assert s.sr_destinations == []


def test_precedence_cli_over_env_over_file(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    cfg = tmp_path / "md.toml"
    cfg.write_text('listen_port = 4000\nae_title = "FROMFILE"\nstable_seconds = 5\n'
                   'sr_destinations = ["PACS@127.0.0.1:4242"]\n')
    monkeypatch.setenv("MAMMO_DENSITY_LISTEN_PORT", "5000")
    s = load_settings(cfg, listen_port=6000)
    assert s.listen_port == 6000
    assert s.ae_title == "FROMFILE"
    assert s.stable_seconds == 5
    assert s.sr_destinations == [Destination("dimse", "PACS", "127.0.0.1", 4242)]
    assert load_settings(cfg).listen_port == 5000


def test_env_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_DENSITY_SR_DESTINATIONS",
                       "PACS@pacs.local:104, https://pacs/dicom-web/, @caller")
    monkeypatch.setenv("MAMMO_DENSITY_ALLOWED_AETS", "MODALITY1,ORTHANC")
    s = load_settings()
    assert [d.kind for d in s.sr_destinations] == ["dimse", "dicomweb", "caller"]
    assert s.sr_destinations[1].url == "https://pacs/dicom-web"
    assert s.allowed_aets == ["MODALITY1", "ORTHANC"]


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("MAMMO_DENSITY_LISTEN_PORT", "70000", "listen_port"),
        ("MAMMO_DENSITY_AE_TITLE", "THIS_AE_TITLE_IS_TOO_LONG", "ae_title"),
        ("MAMMO_DENSITY_SR_DESTINATIONS", "nonsense", "sr_destinations"),
        ("MAMMO_DENSITY_BROKER_URL", "amqp://x", "broker_url"),
        ("MAMMO_DENSITY_STABLE_SECONDS", "-1", "stable_seconds"),
    ],
)
def test_bad_value_names_key(monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                             key: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert key in str(err.value)
    assert env in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "md.toml"
    cfg.write_text("listen_prot = 4000\n")
    with pytest.raises(ConfigError, match="listen_prot"):
        load_settings(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mammo_density.cli", *args],
                          capture_output=True, text=True, env=full_env, timeout=60)


def test_cli_version_help_config() -> None:
    from mammo_density import __version__

    out = _cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    assert _cli("--help").returncode == 0
    cfg = _cli("config", env={"MAMMO_DENSITY_WEBHOOK_SECRET": "s3cret",
                              "MAMMO_DENSITY_BROKER_URL": "redis://:pw@127.0.0.1:1/0"})
    assert cfg.returncode == 0, cfg.stderr
    assert "listen_port = 11112" in cfg.stdout
    assert "s3cret" not in cfg.stdout and "pw@" not in cfg.stdout
    assert 'webhook_secret = "***"' in cfg.stdout


def test_cli_bad_port_exits_nonzero() -> None:
    out = _cli("config", env={"MAMMO_DENSITY_LISTEN_PORT": "70000"})
    assert out.returncode == 2
    assert "listen_port" in out.stderr and "MAMMO_DENSITY_LISTEN_PORT" in out.stderr


# --- mistakes an administrator makes (issue 16) ----------------------------------------


def test_misspelt_env_var_is_an_error_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a misspelt MAMMO_DENSITY_* variable was silently ignored."""
    monkeypatch.setenv("MAMMO_DENSITY_SR_DESTINATION", "PACS@127.0.0.1:104")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "MAMMO_DENSITY_SR_DESTINATION" in str(err.value)
    assert "did you mean MAMMO_DENSITY_SR_DESTINATIONS?" in str(err.value)
    out = _cli("config", env={"MAMMO_DENSITY_LISTEN_PROT": "4000"})
    assert out.returncode == 2
    assert "MAMMO_DENSITY_LISTEN_PROT" in out.stderr
    assert "did you mean MAMMO_DENSITY_LISTEN_PORT?" in out.stderr
    # The test suite's and the benchmarks' own variables are not settings, and allowed.
    monkeypatch.delenv("MAMMO_DENSITY_SR_DESTINATION")
    monkeypatch.setenv("MAMMO_DENSITY_TEST_SOMETHING", "1")
    load_settings()


def test_config_masks_result_backend_password() -> None:
    """Before: `config` printed the result backend's password in clear."""
    out = _cli("config", env={"MAMMO_DENSITY_RESULT_BACKEND": "redis://:hunter2@10.0.0.5:6379/1",
                              "MAMMO_DENSITY_SR_DESTINATIONS":
                              "https://user:pacspw@pacs/dicom-web"})
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "pacspw" not in out.stdout
    assert 'result_backend = "redis://:***@10.0.0.5:6379/1"' in out.stdout


@pytest.mark.parametrize("entry", ["pacs.hospital.local", "10.0.0.0/33", "10.0.0.300",
                                   "10.0.0.0/8/1"])
def test_allowed_hosts_must_be_addresses(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    """Before: a host name or a malformed network was accepted and then matched nothing."""
    monkeypatch.setenv("MAMMO_DENSITY_ALLOWED_HOSTS", f"127.0.0.1, {entry}")
    with pytest.raises(ConfigError, match="allowed_hosts"):
        load_settings()


def test_allowed_hosts_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_DENSITY_ALLOWED_HOSTS", "10.1.2.3, 192.168.0.7/24, ::1")
    assert load_settings().allowed_hosts == ["10.1.2.3/32", "192.168.0.0/24", "::1/128"]


def test_hooks_include_patient_ids_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the setting was accepted and did nothing."""
    monkeypatch.setenv("MAMMO_DENSITY_HOOKS_INCLUDE_PATIENT_IDS", "true")
    with pytest.raises(ConfigError, match="never carry patient identifiers"):
        load_settings()


def test_tls_destination_syntax() -> None:
    d = Destination.parse("tls:PACS@pacs.local:2762")
    assert (d.kind, d.ae_title, d.host, d.port, d.tls) == ("dimse", "PACS", "pacs.local", 2762,
                                                           True)
    assert str(d) == "tls:PACS@pacs.local:2762"
    assert not Destination.parse("PACS@pacs.local:104").tls
    assert Destination.parse("https://pacs/dicom-web").tls


def test_errors_mask_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMO_DENSITY_BROKER_URL", "amqp://guest:hunter2@mq:5672//")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2" not in str(err.value) and "broker_url" in str(err.value)
    monkeypatch.delenv("MAMMO_DENSITY_BROKER_URL")
    monkeypatch.setenv("MAMMO_DENSITY_SR_DESTINATIONS", "htps://u:hunter2@pacs/dicom-web")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2" not in str(err.value) and "sr_destinations" in str(err.value)
