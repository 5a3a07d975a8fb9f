"""Built-in hook ``webhook``: HTTP POST of the payload JSON, signed with HMAC-SHA256.

Request: ``POST settings.webhook_url`` with ``Content-Type: application/json``, the body
the canonical JSON of the payload (sorted keys, no spaces, UTF-8) and the headers

- ``X-Mammo-Density-Event: <event_id>`` (stable: the receiver de-duplicates on it),
- ``X-Mammo-Density-Signature: sha256=<hex HMAC-SHA256 of the raw body, key
  settings.webhook_secret>`` (verify with :func:`verify_signature`).

Any answer other than 2xx, a timeout (``settings.webhook_timeout``) or a connection error
raises, and :class:`~mammo_density.worker.hooks.HookQueue` retries with backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import requests

from mammo_density import __version__

SIGNATURE_HEADER = "X-Mammo-Density-Signature"
EVENT_HEADER = "X-Mammo-Density-Event"

log = logging.getLogger(__name__)


class WebhookError(RuntimeError):
    """The receiver did not accept the event."""


def canonical_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are POSTed and signed."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    """Header value ``sha256=<hex>`` of the HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver does: constant-time comparison of the signature header."""
    return bool(header) and hmac.compare_digest(sign(body, secret), header)


def _secret(settings: Any) -> str:
    value = getattr(settings, "webhook_secret", "")
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value or "")


def webhook_hook(payload: dict[str, Any], *, settings: Any) -> None:
    """POST one event; raises :class:`WebhookError` or a ``requests`` error on failure."""
    url = getattr(settings, "webhook_url", "")
    if not url:
        raise WebhookError("webhook_url is not set")
    body = canonical_body(payload)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"mammo-density/{__version__}",
        EVENT_HEADER: str(payload.get("event_id", "")),
    }
    secret = _secret(settings)
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    else:
        log.warning("webhook_secret is empty: sending the event unsigned")
    timeout = float(getattr(settings, "webhook_timeout", 10.0))
    response = requests.post(url, data=body, headers=headers, timeout=(timeout, timeout),
                             allow_redirects=False)
    if not 200 <= response.status_code < 300:
        raise WebhookError(f"HTTP {response.status_code} from webhook receiver")


__all__ = ["EVENT_HEADER", "SIGNATURE_HEADER", "WebhookError", "canonical_body", "sign",
           "verify_signature", "webhook_hook"]
