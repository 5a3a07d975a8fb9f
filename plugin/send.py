"""Send one SR to one destination: C-STORE SCU (pynetdicom) or STOW-RS (dicomweb-client).

Each function either returns a short success note or raises :class:`DeliveryError` with
a message fit for ``status`` (no patient data, URLs with passwords masked). Every
network call has a timeout.

TLS (docs/security.md): a ``tls:AET@host:port`` destination is C-STOREd over TLS (DICOM
PS3.15 secure transport, TLS 1.2 or later), an ``https://`` one over HTTPS. Both verify the
PACS's certificate and host name against ``sr_tls_ca`` (else the system's CA store) and
present ``sr_tls_cert``/``sr_tls_key`` when the PACS asks for a client certificate.
"""

from __future__ import annotations

import copy
import logging
import ssl
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from mammo_density.config import mask_url
from mammo_density.plugin.tcp import HANDLERS

log = logging.getLogger(__name__)

# C-STORE statuses that mean "stored" (PS3.4 B.2.3): success and the three warnings
# (coercion of data elements, elements discarded, dataset does not match SOP class).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(Exception):
    """A delivery attempt failed; the message says why (kept as ``last_error``)."""


def client_tls_context(ca: Path | str | None = None, cert: Path | str | None = None,
                       key: Path | str | None = None) -> ssl.SSLContext:
    """Client TLS context: TLS 1.2+, the server verified against ``ca`` (else the system
    store) with its host name, and a client certificate when ``cert`` is given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def c_store(ds: Dataset, *, ae_title: str, host: str, port: int, calling_aet: str,
            timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> str:
    """C-STORE ``ds`` to ``ae_title@host:port`` (over TLS with ``tls``); return the status
    as ``"0x0000"``.

    Raises
    ------
    DeliveryError
        Connection refused or timed out, association rejected or aborted, no response,
        or a failure status (``0xA700`` out of resources, ``0xA900``, ``0xC000``...).
    """
    where = ("tls:" if tls else "") + f"{ae_title}@{host}:{port}"
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    native = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    compressed = native is not None and native.is_compressed
    if compressed:  # e.g. the JPEG summary image: as it is, else decompressed below
        ae.add_requested_context(ds.SOPClassUID, [native])
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(host, port, ae_title=ae_title,
                             tls_args=(tls, host) if tls else None, evt_handlers=HANDLERS)
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        raise DeliveryError(f"TLS with {where} failed: {exc}") from None
    if not assoc.is_established:
        if assoc.is_rejected:
            raise DeliveryError(f"association rejected by {where}")
        # pynetdicom reports a refused or timed-out connection (and a failed TLS
        # handshake) as an abort too.
        raise DeliveryError(f"no association with {where} (connection refused, timed out"
                            + (", TLS handshake failed" if tls else "") + " or aborted)")
    try:
        if not assoc.accepted_contexts:
            raise DeliveryError(f"{where} accepts no presentation context for SOP class "
                                f"{ds.SOPClassUID}")
        if compressed and not any(c.transfer_syntax[0] == native
                                  for c in assoc.accepted_contexts):
            ds = copy.deepcopy(ds)
            ds.decompress()  # the peer takes only uncompressed data
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or "Status" not in status:
        raise DeliveryError(f"no C-STORE response from {where} (timeout or abort)")
    code = int(status.Status)
    if code in _STORED:
        return f"0x{code:04X}"
    comment = str(status.get("ErrorComment", "") or "").strip()
    raise DeliveryError(f"C-STORE to {where} failed with status 0x{code:04X}"
                        + (f": {comment}" if comment else ""))


def stow_rs(ds: Dataset, *, url: str, timeout: float = 30.0, ca: Path | str | None = None,
            cert: Path | str | None = None, key: Path | str | None = None) -> str:
    """STOW-RS ``ds`` to the DICOMweb service at ``url`` (its root, e.g. ``.../dicom-web``);
    an https URL is verified against ``ca`` (else the system store), with the client
    certificate ``cert``/``key`` when given.

    Raises
    ------
    DeliveryError
        HTTP or connection error, or a response that lists the instance as failed.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    where = mask_url(url)
    session = requests.Session()
    if ca:
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's verify:
        # take nothing from the environment but its proxies.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(url))
        session.verify = str(ca)
    if cert:
        session.cert = (str(cert), str(key)) if key else str(cert)
    client = DICOMwebClient(url=url, timeout=timeout, session=session)
    client.set_http_retry_params(retry=False)  # the outbox retries, with its own backoff
    try:
        response = client.store_instances([ds])
    except requests.RequestException as exc:
        raise DeliveryError(f"STOW-RS to {where} failed: {type(exc).__name__}: "
                            f"{mask_url(str(exc))[:300]}") from None
    except (ValueError, TypeError) as exc:  # a response that is not a DICOM JSON dataset
        raise DeliveryError(f"STOW-RS to {where}: unreadable response ({exc})") from None
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reason = failed[0].get("FailureReason", "")
        raise DeliveryError(f"STOW-RS to {where} refused the instance (reason {reason})")
    return "stored"


__all__ = ["DeliveryError", "c_store", "client_tls_context", "stow_rs"]
