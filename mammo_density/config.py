"""Typed settings: one TOML file plus ``MAMMO_DENSITY_*`` environment variables.

Precedence, highest first: values given on the command line, environment variables,
the TOML file (``--config FILE`` or ``MAMMO_DENSITY_CONFIG``), built-in defaults. The
defaults serve a single machine out of the box: embedded pipeline (no broker), data under
the user's data directory, the bundled demo model.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "MAMMO_DENSITY_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# Variables of the test suite and the benchmarks, not settings of the node.
_ENV_RESERVED = (ENV_PREFIX + "TEST_", ENV_PREFIX + "BENCH_")

# Passwords shipped in templates: refused, so that no node runs with a published secret.
_PLACEHOLDER_RE = re.compile(r"^(replace|change-?me)", re.IGNORECASE)
_AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash


def default_data_dir() -> Path:
    """Where state, spool and outbox live when nothing is configured."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mammo-density"


def _validate_aet(value: str) -> str:
    value = value.strip()
    if not _AET_RE.match(value):
        raise ValueError(f"not a valid DICOM AE title (1-16 printable characters): {value!r}")
    return value


@dataclass(frozen=True)
class Destination:
    """Where a Structured Report is sent: a DICOM node or a DICOMweb STOW-RS URL.

    Written in configuration as ``AET@host:port`` (``tls:AET@host:port`` for DICOM over
    TLS) or ``http(s)://.../dicom-web``; the special value ``@caller`` means "back to the
    AE that sent the study".
    """

    kind: Literal["dimse", "dicomweb", "caller"]
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> Destination:
        text = text.strip()
        if text == "@caller":
            return cls(kind="caller")
        if text.startswith(("http://", "https://")):
            return cls(kind="dicomweb", url=text.rstrip("/"), tls=text.startswith("https:"))
        tls = text.lower().startswith("tls:")
        if tls:
            text = text[4:].strip()
        m = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:@]+):(\d+)", text)
        if not m:
            raise ValueError(
                f"destination {mask_url(text)!r} is neither AET@host:port, "
                "tls:AET@host:port, an http(s) URL nor @caller"
            )
        port = int(m.group(3))
        if not 1 <= port <= 65535:
            raise ValueError(f"destination {text!r}: port {port} outside 1-65535")
        return cls(kind="dimse", ae_title=_validate_aet(m.group(1)),
                   host=m.group(2).strip("[]"), port=port, tls=tls)

    def __str__(self) -> str:
        if self.kind == "caller":
            return "@caller"
        if self.kind == "dicomweb":
            return mask_url(self.url)
        return ("tls:" if self.tls else "") + f"{self.ae_title}@{self.host}:{self.port}"


def mask_url(url: str) -> str:
    """Hide a password embedded in a URL (``redis://:secret@host`` -> ``redis://:***@host``)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every setting of the node. Field names are also the TOML keys; the environment
    variable of a field is ``MAMMO_DENSITY_`` + its name in capitals."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    # --- DICOM listener -------------------------------------------------------------
    ae_title: str = Field("MAMMODENSITY", description="AE title of the listener")
    listen_host: str = Field("0.0.0.0", description="address the listener binds")
    listen_port: int = Field(11112, ge=1, le=65535, description="DICOM port of the listener")
    allowed_aets: CommaList = Field(
        default_factory=list, description="calling AE titles allowed to connect; empty = any"
    )
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="source IP addresses or networks (CIDR) allowed to connect; empty = any. "
        "Host names are refused: resolve them yourself, the listener never does DNS",
    )
    require_called_aet: bool = Field(
        True, description="refuse associations whose called AE title is not ae_title"
    )
    max_associations: int = Field(
        16, ge=1, le=1000, description="concurrent associations (A-ASSOCIATE-RQ received)"
    )
    max_pending_connections: int = Field(
        64, ge=1, le=10000,
        description="TCP connections at once that have not yet sent A-ASSOCIATE-RQ",
    )
    acse_timeout: float = Field(
        10.0, gt=0, description="s a new connection has to send its A-ASSOCIATE-RQ (and a "
        "peer to answer A-RELEASE); idle connections are closed after it"
    )
    network_timeout: float = Field(
        60.0, gt=0, description="s an established association may stay silent before abort"
    )
    dimse_timeout: float = Field(
        60.0, gt=0, description="s to wait for a DIMSE message inside an association"
    )
    tls_handshake_timeout: float = Field(
        10.0, gt=0, description="s a TLS client has to finish its handshake"
    )
    min_free_disk_mb: int = Field(
        1024, ge=0, description="below this much free space C-STORE answers 0xA700"
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = Field(None, description="CA bundle to verify client certificates")
    stable_seconds: float = Field(
        60.0, gt=0, description="seconds without new images before an incomplete study is assessed"
    )

    # --- storage ----------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)

    # --- pipeline ---------------------------------------------------------------------
    broker_url: str = Field("", description="Celery broker (redis://...); empty = embedded")
    embedded_workers: int = Field(1, ge=1, le=64, description="in-process pipeline threads")
    task_time_limit: float = Field(
        60.0, gt=0, description="hard limit per pipeline task (preprocess, infer, report), s"
    )
    visibility_timeout: float = Field(
        90.0, gt=0, description="Redis visibility timeout, s: a killed worker's study is "
        "redelivered after this; must exceed task_time_limit"
    )
    result_backend: str = Field(
        "", description="Celery result backend (redis://...); empty = results not stored"
    )
    celery_single_task: bool = Field(
        False, description="Celery: each study as one task running all four stages on the "
        "cpu queue (one host, workers taking both queues): no model-ready arrays through "
        "Redis, ~10% less CPU a study; off: the prepare -> infer -> decide -> report chain, "
        "whose infer runs on gpu-queue workers anywhere"
    )
    model_dir: Path | None = Field(
        None, description="model registry entry to use; empty = bundled demo model"
    )
    dense_model_dir: Path | None = Field(
        None, description="optional dense2 model set; else dense = P(C)+P(D) of birads4"
    )
    ort_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per network; 0 = the cores this "
        "process may use divided by ort_parallel_views")
    ort_inter_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime inter-op threads "
                                   "(parallel execution mode only)")
    ort_graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level")
    ort_execution_mode: Literal["sequential", "parallel"] = Field(
        "sequential", description="ONNX Runtime execution mode")
    ort_spinning: bool = Field(False, description="let idle ONNX Runtime threads busy-wait")
    ort_parallel_views: int = Field(2, ge=1, le=8, description="view networks run at the "
                                    "same time for one study (threads)")
    ort_batch_shared: bool = Field(True, description="views sharing one network file run "
                                   "as one batch")
    prepare_on_arrival: bool = Field(
        True, description="embedded pipeline: prepare each image's model input in the "
        "background as it is spooled (cached beside the spool), so a complete study only "
        "needs inference; Celery workers read the entries they find in a local spool")
    model_variant: Literal["fp32", "int8"] = Field(
        "fp32", description="which networks of the model entry to run: fp32 (exported) or "
        "int8 (`mammo-density quantize`; see its parity report before using it)")
    ort_providers: CommaList = Field(
        default_factory=list, description="execution providers; empty = CUDA if present, else CPU"
    )

    # --- SR delivery ------------------------------------------------------------------
    sr_destinations: Annotated[list[Destination], NoDecode] = Field(
        default_factory=list,
        description="comma-separated AET@host:port, DICOMweb URLs, or @caller",
    )
    sr_calling_aet: str = Field("MAMMODENSITY", description="AE title used to send SRs")
    sr_retry_max_seconds: float = Field(
        60.0, gt=0, description="longest wait between SR delivery retries, s (a PACS that "
        "accepts one SR makes the others waiting for it due at once)"
    )
    sr_retry_base_seconds: float = Field(
        5.0, gt=0, description="first wait after a failed SR delivery; doubles per attempt"
    )
    sr_timeout_seconds: float = Field(
        30.0, gt=0, description="network timeout of one SR delivery (DIMSE or HTTP), s"
    )
    sr_tls_ca: Path | None = Field(
        None, description="CA bundle to verify the PACS for tls: and https destinations; "
        "empty = the system's CA store"
    )
    sr_tls_cert: Path | None = Field(
        None, description="client certificate for tls: and https destinations (optional)"
    )
    sr_tls_key: Path | None = Field(None, description="key of sr_tls_cert")
    caller_port: int = Field(
        0, ge=0, le=65535,
        description="DICOM port of the calling AE for @caller SR delivery (host = the peer's "
        "address); 0 = not configured: @caller deliveries are recorded as skipped",
    )
    comprehensive_3d_sr: bool = Field(False, description="write Comprehensive 3D SR instead")
    sr_summary_image: bool = Field(
        True, description="also send a summary image (Secondary Capture) of the result to "
        "the SR destinations, in the same study")

    # --- screening-image gate (mammo_density.study.gate) --------------------------------
    digitised_film: bool = Field(
        False, description="assess digitised film (Secondary Capture, Modality MG); "
        "the listener then also accepts Secondary Capture")

    # --- hooks ------------------------------------------------------------------------
    hooks: CommaList = Field(
        default_factory=list,
        description="hooks to run: names of mammo_density.hooks entry points or module:callable",
    )
    webhook_url: str = ""
    webhook_secret: SecretStr = SecretStr("")
    webhook_timeout: float = Field(10.0, gt=0)
    registry_url: str = Field("", description="dose registry database; empty = SQLite in data_dir")
    hooks_include_patient_ids: bool = Field(
        False, description="not supported: hook payloads never carry patient identifiers"
    )
    fhir_url: str = Field(
        "", description="FHIR server base URL: each result is POSTed there as a transaction "
        "Bundle of Observations (hook 'fhir'); empty = off")
    fhir_token: SecretStr = Field(SecretStr(""), description="bearer token for fhir_url")
    fhir_timeout: float = Field(10.0, gt=0, description="network timeout of one FHIR POST, s")
    dose_reference_mgy: float = Field(
        2.5, gt=0, description="AGD reference level (mGy) at 45 mm compressed thickness"
    )
    registry_enabled: bool = Field(True, description="record every exam in the dose registry")
    hook_retry_max_seconds: float = Field(
        3600.0, gt=0, description="longest wait between hook delivery retries, s"
    )
    screening_rules: CommaList = Field(
        default_factory=lambda: ["dense", "dose_reference", "partial"],
        description="screening rules to evaluate: built-in names or module:callable",
    )
    dense_categories: CommaList = Field(
        default_factory=lambda: ["C", "D"],
        description="BI-RADS classes for which supplemental imaging is suggested",
    )

    @field_validator("ae_title", "sr_calling_aet")
    @classmethod
    def _check_aet(cls, value: str) -> str:
        return _validate_aet(value)

    @field_validator("allowed_aets", "allowed_hosts", "hooks", "ort_providers",
                     "screening_rules", "dense_categories", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_aets")
    @classmethod
    def _check_aets(cls, value: list[str]) -> list[str]:
        return [_validate_aet(v) for v in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            try:
                out.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (a.b.c.d, a.b.c.d/nn, IPv6); "
                    "host names are not resolved: give the sender's address") from None
        return out

    @field_validator("hooks_include_patient_ids")
    @classmethod
    def _no_patient_ids(cls, value: bool) -> bool:
        if value:
            raise ValueError("not supported: hook payloads never carry patient identifiers "
                             "(match results by StudyInstanceUID); remove the setting")
        return value

    @field_validator("sr_destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            return [v if isinstance(v, Destination) else Destination.parse(str(v)) for v in value]
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        value = value.strip()
        if value and urlsplit(value).scheme not in {"redis", "rediss", "memory", "sentinel"}:
            raise ValueError("broker URL must be redis://, rediss:// or sentinel://: "
                             f"{mask_url(value)!r}")
        return value

    @field_validator("broker_url", "result_backend", "registry_url", "webhook_url")
    @classmethod
    def _no_placeholder_password(cls, value: str) -> str:
        try:
            password = urlsplit(value).password
        except ValueError:
            return value
        if password and _PLACEHOLDER_RE.match(password):
            raise ValueError("the URL's password is still the template's placeholder "
                             f"({mask_url(value)}): set the real one")
        return value

    @property
    def embedded(self) -> bool:
        """True when the pipeline runs in-process (no broker configured)."""
        return not self.broker_url

    # Derived paths, one place for everyone.
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.sqlite3"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else ""
            elif name in _URL_SETTINGS:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, list):
                value = [str(v) for v in value]
            out[name] = value
        return out


# Settings that may hold a URL with a password: masked wherever they are shown.
_URL_SETTINGS = frozenset({"broker_url", "result_backend", "registry_url", "webhook_url",
                           "fhir_url"})


class ConfigError(Exception):
    """Invalid configuration; the message names every offending key."""


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "?"
        field = str(e["loc"][0]) if e["loc"] else ""
        env = f" (env {ENV_PREFIX}{field.upper()})" if field else ""
        lines.append(f"  {key}{env}: {e['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """``MAMMO_DENSITY_*`` variables that name no setting, each with a "did you mean"."""
    environ = dict(os.environ if environ is None else environ)
    fields = {name.upper(): name for name in Settings.model_fields}
    out = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV \
                or upper.startswith(_ENV_RESERVED):
            continue
        name = upper[len(ENV_PREFIX):]
        if name in fields:
            continue
        close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        out.append(f"  {key}: no such setting{hint}")
    return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from overrides, environment, TOML file and defaults.

    Parameters
    ----------
    config_file
        TOML file; when omitted, ``MAMMO_DENSITY_CONFIG`` is used if set.
    **overrides
        Values from the command line; ``None`` values are ignored.

    Raises
    ------
    ConfigError
        With a message naming each invalid key and its environment variable, or each
        ``MAMMO_DENSITY_*`` environment variable that names no setting.
    """
    unknown = unknown_env_vars()
    if unknown:
        raise ConfigError("unknown environment variable(s):\n" + "\n".join(unknown))
    path = config_file or os.environ.get(CONFIG_ENV) or None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
    clean = {k: v for k, v in overrides.items() if v is not None}

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    try:
        loaded = _FileSettings(**clean)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    except (ValueError, OSError) as err:  # e.g. malformed TOML
        raise ConfigError(f"invalid configuration: {err}") from None
    return Settings.model_construct(**{k: getattr(loaded, k) for k in Settings.model_fields})


__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ConfigError",
    "Destination",
    "Settings",
    "default_data_dir",
    "load_settings",
    "mask_url",
    "unknown_env_vars",
]
