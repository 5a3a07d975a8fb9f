"""The DICOM front door: a pynetdicom Storage SCP that spools, records and assembles studies.

Protocol and application meet only in the two bound handlers: C-ECHO answers Success;
C-STORE hands the received file to :class:`~mammo_density.plugin.ingest.Ingestor` and
answers its status. The listener is given a ``submit(job)`` callable and never imports
the pipeline.

Data sets are received in pynetdicom's chunked mode (``STORE_RECV_CHUNKED_DATASET``): the
peer's bytes go straight to a file as they arrive, so memory stays flat whatever the
image size, and the file is renamed (same file system) or copied into the spool.

Guards: allow-lists of calling AE titles (association rejected, "calling AE title not
recognised") and of source addresses (the connection is closed before association),
optional TLS, a cap on concurrent associations (rejected transiently beyond it), and the
free-disk watermark (C-STORE answers 0xA700).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import uid as uids
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from mammo_density.config import Settings
from mammo_density.job import StudyJob
from mammo_density.plugin.assembly import StableTimer, StudyAssembler
from mammo_density.plugin.ingest import CANNOT_UNDERSTAND, Incoming, Ingestor
from mammo_density.plugin.spool import clean_partials
from mammo_density.plugin.state import StateDB
from mammo_density.study import sop

log = logging.getLogger(__name__)

# Accepted transfer syntaxes: we store the bytes as sent; decoding happens in the worker.
TRANSFER_SYNTAXES: list[str] = [
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,  # retired, but some dose reports still use it
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.HTJ2KLossless,
    uids.HTJ2KLosslessRPCL,
    uids.HTJ2K,
    uids.RLELossless,
]

# Largest PDU we accept; bigger PDUs mean fewer round trips for 27 MB mammograms.
MAX_PDU = 4 * 1024 * 1024


def _host_matcher(allowed: list[str]) -> Callable[[str], bool]:
    networks = []
    names = set()
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower())

    def allowed_host(host: str) -> bool:
        if host.lower() in names:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in networks)

    return allowed_host


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server TLS context from ``tls_cert``/``tls_key`` (and ``tls_ca`` to require client
    certificates), or None when TLS is not configured."""
    if not settings.tls_cert:
        return None
    if not settings.tls_key:
        raise ValueError("tls_cert is set but tls_key is not")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca:
        ctx.load_verify_locations(str(settings.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


_chunked_lock = threading.Lock()
_chunked_users = [0, False]  # running listeners, the flag's value before the first


def _chunked_receive(on: bool) -> None:
    """Switch pynetdicom's process-wide chunked receiving on for the first running
    listener, and back to what it was when the last one stops."""
    with _chunked_lock:
        if on:
            if _chunked_users[0] == 0:
                _chunked_users[1] = _config.STORE_RECV_CHUNKED_DATASET
            _chunked_users[0] += 1
            _config.STORE_RECV_CHUNKED_DATASET = True
        elif _chunked_users[0] > 0:
            _chunked_users[0] -= 1
            if _chunked_users[0] == 0:
                _config.STORE_RECV_CHUNKED_DATASET = _chunked_users[1]


class Listener:
    """The Storage SCP of the node.

    Parameters
    ----------
    settings
        Listener settings (AE title, host/port, allow-lists, TLS, limits, stable time).
    db
        State database.
    submit
        ``submit(job: StudyJob)``: hands a ready study to the pipeline; must not block long.
    receive_in_spool
        Have pynetdicom write incoming data sets under ``<spool>/.incoming`` (sets the
        process-wide ``tempfile.tempdir``) so that committing is a rename, not a copy.
        Meant for the ``serve`` process; leave False when embedding in other programs.
    """

    def __init__(self, settings: Settings, db: StateDB, submit: Callable[[StudyJob], object],
                 *, receive_in_spool: bool = False) -> None:
        self.settings = settings
        self.db = db
        self.assembler = StudyAssembler(db, submit, stable_seconds=settings.stable_seconds)
        self.spool_dir = settings.spool_dir
        self.receive_in_spool = receive_in_spool
        self.ingestor = Ingestor(self.spool_dir, self.assembler,
                                 min_free_disk_mb=settings.min_free_disk_mb,
                                 move=receive_in_spool,
                                 digitised_film=settings.digitised_film)
        self._server = None
        self._timer: StableTimer | None = None
        self._allowed_host = (_host_matcher(settings.allowed_hosts)
                              if settings.allowed_hosts else None)

    # --- pynetdicom handlers ------------------------------------------------------------
    @staticmethod
    def handle_echo(event: evt.Event) -> int:
        return 0x0000  # Success

    def handle_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: a thin adapter from pynetdicom's event to :meth:`Ingestor.store`."""
        own_copy = False
        try:
            req = event.request
            requestor = event.assoc.requestor
            try:
                received = event.dataset_path
            except AttributeError:
                received = None
            if received:
                path = Path(received)
            else:  # chunked receiving switched off by someone else: the data set is in memory
                path, own_copy = self._write_in_memory(event), True
            incoming = Incoming(
                path=path,
                sop_class_uid=str(req.AffectedSOPClassUID or ""),
                sop_instance_uid=str(req.AffectedSOPInstanceUID or ""),
                transfer_syntax=str(event.context.transfer_syntax),
                calling_aet=str(requestor.ae_title or "").strip(),
                peer_host=str(requestor.address or ""),
            )
        except Exception as err:
            log.warning("C-STORE refused 0x%04X: request unreadable (%s)", CANNOT_UNDERSTAND,
                        type(err).__name__)
            return CANNOT_UNDERSTAND  # Cannot understand
        try:
            return self.ingestor.store(incoming)
        finally:
            if own_copy:
                path.unlink(missing_ok=True)

    def _write_in_memory(self, event: evt.Event) -> Path:
        tmp = tempfile.NamedTemporaryFile(delete=False, suffix=".dcm")  # noqa: SIM115
        with tmp:
            tmp.write(event.encoded_dataset(include_meta=True))
        return Path(tmp.name)

    # --- life cycle ---------------------------------------------------------------------
    def build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = MAX_PDU
        ae.maximum_associations = self.settings.max_associations
        ae.require_calling_aet = list(self.settings.allowed_aets)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for sop_class in sop.accepted_classes(digitised_film=self.settings.digitised_film):
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        return ae

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return (self.settings.listen_host, self.settings.listen_port)
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, *, resume: bool = True) -> Listener:
        """Start serving in background threads (and the stable timer); resubmit studies
        left queued by a previous run, record orphan spool files."""
        _chunked_receive(True)
        removed = clean_partials(self.spool_dir)
        if removed:
            log.info("removed %d partial spool file(s) left by a crash", removed)
        if self.receive_in_spool:
            incoming = self.spool_dir / ".incoming"
            incoming.mkdir(parents=True, exist_ok=True)
            tempfile.tempdir = str(incoming)
        if resume:  # first, so that studies the reconciliation queues are submitted once
            self.assembler.resume()
        orphans = self.ingestor.reconcile()
        if orphans:
            log.info("recorded %d spooled instance(s) missing from the state", orphans)
        ae = self.build_ae()
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)]
        self._server = ae.start_server(
            (self.settings.listen_host, self.settings.listen_port), block=False,
            ssl_context=tls_context(self.settings), evt_handlers=handlers)
        if self._allowed_host is not None:
            self._server.verify_request = self._verify_request  # type: ignore[method-assign]
        self._ae = ae
        self._timer = StableTimer(self.assembler).start()
        host, port = self.address
        log.info("listening on %s@%s:%d%s", self.settings.ae_title, host, port,
                 " (TLS)" if self.settings.tls_cert else "")
        return self

    def _verify_request(self, request, client_address) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else ""
        if self._allowed_host is not None and not self._allowed_host(host):
            log.warning("connection from %s refused: address not in allowed_hosts", host)
            return False
        return True

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; let running associations finish for up to ``grace`` seconds
        (then abort them: an unanswered C-STORE is sent again by the peer)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            deadline = time.monotonic() + grace
            while self._busy() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._busy():
                log.warning("aborting %d association(s) still open after %g s",
                            self._busy(), grace)
            self._ae.shutdown()
            _chunked_receive(False)
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _busy(self) -> int:
        """Established associations (a bare TCP connection that never asked for an
        association, e.g. a port probe, is not waited for)."""
        return sum(1 for a in self._ae.active_associations if a.is_established)

    def serve_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set, then stop."""
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()


__all__ = ["MAX_PDU", "TRANSFER_SYNTAXES", "Listener", "tls_context"]
