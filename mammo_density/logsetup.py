"""Logging configuration for the entry points (modules only call ``getLogger``).

Privacy: log records must never carry patient names or IDs. UIDs may appear only through
:func:`uid_hash`, a short stable hash that lets an administrator follow one study through
the logs without exposing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def uid_hash(uid: str | None) -> str:
    """Short stable pseudonym of a DICOM UID for logs (first 12 hex of its SHA-256)."""
    if not uid:
        return "-"
    return hashlib.sha256(str(uid).encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(verbosity: int = 0, fmt: str = "text") -> None:
    """Configure the root logger once, from an entry point.

    ``verbosity``: -1 quiet (warnings), 0 info, 1+ debug.
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries chatty at INFO: pynetdicom logs every PDU, highdicom every module it copies
    # (with unhashed UIDs). Keep them at WARNING unless debugging with -vv.
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    # Python warnings (the project raises none; glymur on JP2 boxes, pydicom on odd
    # values do) go to the log at DEBUG, not as raw lines on stderr.
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    for old in list(warnings_log.filters):
        if isinstance(old, _ThirdPartyWarnings):
            warnings_log.removeFilter(old)
    warnings_log.addFilter(_ThirdPartyWarnings())


class _ThirdPartyWarnings(logging.Filter):
    """Demote captured Python warnings to DEBUG (shown with ``-v``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
