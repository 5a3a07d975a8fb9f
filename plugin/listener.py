"""The DICOM front door: a pynetdicom Storage SCP that spools, records and assembles studies.

Protocol and application meet only in the two bound handlers: C-ECHO answers Success;
C-STORE hands the received file to :class:`~mammo_density.plugin.ingest.Ingestor` and
answers its status. The listener is given a ``submit(job)`` callable and never imports
the pipeline.

Data sets are received in pynetdicom's chunked mode (``STORE_RECV_CHUNKED_DATASET``): the
peer's bytes go straight to a file as they arrive, so memory stays flat whatever the
image size, and the file is renamed (same file system) or copied into the spool.

Guards, in the order a peer meets them (docs/security.md):

1. at ``accept`` (the server's only thread that accepts connections, so nothing slow
   runs there): the source-address allow-list and the cap on connections that have not
   yet asked for an association (``max_pending_connections``); refused connections are
   closed at once;
2. in the connection's own thread: the TLS handshake, limited to
   ``tls_handshake_timeout`` seconds, so a client that never starts TLS holds only
   itself; then ``acse_timeout`` seconds to send its A-ASSOCIATE-RQ (an idle TCP
   connection is dropped after that and never counts against ``max_associations``);
3. at A-ASSOCIATE-RQ: the calling AE allow-list, the called AE title (when
   ``require_called_aet``), and ``max_associations`` counted over associations that were
   requested, not over bare connections. Each is answered with A-ASSOCIATE-RJ;
4. per C-STORE: the free-disk watermark (0xA700).

Every refusal is logged at WARNING with the calling AE title (where known) and the peer
address and port: never a patient identifier.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from pydicom import uid as uids
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from mammo_density.config import Settings
from mammo_density.job import StudyJob
from mammo_density.plugin import tcp
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
    """Match a peer address against addresses and networks (the settings refuse anything
    else, host names included, at load time)."""
    networks = [ipaddress.ip_network(entry, strict=False) for entry in allowed]

    def allowed_host(host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in networks)

    return allowed_host


def _peer(address: object) -> tuple[str, int]:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return str(address or "?"), 0


def _shown_aet(value: object) -> str:
    """A peer-supplied AE title fit for a log line (printable, at most 16 characters)."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    return "".join(c if " " <= c <= "~" else "?" for c in text.strip())[:16]


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
        self._ssl: ssl.SSLContext | None = None
        self._door_lock = threading.Lock()
        self._handshaking = 0
        self._admitted: weakref.WeakSet = weakref.WeakSet()

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
        # The association limit and the AE checks are ours (:meth:`_on_requested`): they
        # count requested associations only and log every refusal. pynetdicom's own
        # checks stay as a backstop behind ours (its limit above ours: it counts bare
        # connections too).
        ae.maximum_associations = (self.settings.max_associations
                                   + self.settings.max_pending_connections)
        ae.require_calling_aet = list(self.settings.allowed_aets)
        ae.require_called_aet = self.settings.require_called_aet
        ae.acse_timeout = self.settings.acse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
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
        self._ssl = tls_context(self.settings)
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store),
                    (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_REJECTED, self._on_rejected), *tcp.HANDLERS]
        # No ssl_context for pynetdicom: it would run the handshake inside accept(), with
        # no timeout, before the allow-list. Ours runs in the connection's thread.
        self._ae = ae
        self._server = server = ae.start_server(
            (self.settings.listen_host, self.settings.listen_port), block=False,
            evt_handlers=handlers)
        server.verify_request = self._verify_request  # type: ignore[method-assign]
        if self._ssl is not None:
            server.finish_request = functools.partial(  # type: ignore[method-assign]
                self._finish_tls, server.finish_request)
        self._timer = StableTimer(self.assembler).start()
        host, port = self.address
        log.info("listening on %s@%s:%d%s", self.settings.ae_title, host, port,
                 " (TLS)" if self.settings.tls_cert else "")
        return self

    # --- the door (see the module docstring) ---------------------------------------------
    def _pending_connections(self) -> int:
        """Connections not yet past their A-ASSOCIATE-RQ: TLS handshakes under way and
        acceptor threads still waiting for the request (a connection the peer closed is
        not counted: its thread only waits out ``acse_timeout``)."""
        waiting = sum(1 for a in self._ae.active_associations
                      if a.is_acceptor and a.requestor.primitive is None and a.dul.is_alive())
        return waiting + self._handshaking

    def _verify_request(self, request: socket.socket, client_address: object) -> bool:
        """Runs in the accept thread: cheap checks only, no reads from the peer."""
        host, port = _peer(client_address)
        if self._allowed_host is not None and not self._allowed_host(host):
            log.warning("connection from %s:%d refused: address not in allowed_hosts",
                        host, port)
            return False
        limit = self.settings.max_pending_connections
        if self._pending_connections() >= limit:
            log.warning("connection from %s:%d refused: %d connection(s) already waiting to "
                        "associate (max_pending_connections)", host, port, limit)
            return False
        return True

    def _finish_tls(self, finish: Callable[[socket.socket, object], None],
                    request: socket.socket, client_address: object) -> None:
        """In the connection's thread: the TLS handshake with a timeout, then pynetdicom."""
        host, port = _peer(client_address)
        assert self._ssl is not None
        with self._door_lock:
            self._handshaking += 1
        limit = self.settings.tls_handshake_timeout
        # A deadline for the whole handshake, not only per read: a peer that trickles a
        # byte at a time is cut off too (shutdown wakes the blocked read).
        deadline = threading.Timer(limit, self._cut, args=(request,))
        deadline.daemon = True
        started = time.monotonic()
        try:
            request.settimeout(limit)
            deadline.start()
            try:
                tls = self._ssl.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as err:  # ssl.SSLError and TimeoutError are OSErrors
                late = isinstance(err, TimeoutError) or time.monotonic() - started >= limit
                reason = (f"no TLS handshake within {limit:g} s" if late
                          else getattr(err, "reason", None) or type(err).__name__)
                log.warning("connection from %s:%d refused: TLS handshake failed (%s)",
                            host, port, reason)
                with contextlib.suppress(OSError):
                    request.close()
                return
            tls.settimeout(None)
        finally:
            deadline.cancel()
            with self._door_lock:
                self._handshaking -= 1
        finish(tls, client_address)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED (A-ASSOCIATE-RQ received): AE checks and the association limit;
        a refusal is answered with A-ASSOCIATE-RJ and logged. Fails closed: pynetdicom
        swallows a handler's exception and would go on to accept."""
        try:
            self._admit(event.assoc)
        except Exception:
            log.exception("association refused: admission check failed")
            with contextlib.suppress(Exception):
                event.assoc.acse.send_reject(0x02, 0x01, 0x01)
                event.assoc.kill()

    def _admit(self, assoc) -> None:
        rq = assoc.requestor.primitive
        calling = _shown_aet(rq.calling_ae_title)
        called = _shown_aet(rq.called_ae_title)
        host, port = _peer((assoc.requestor.address, assoc.requestor.port))
        s = self.settings
        reason, rsd = "", (0, 0, 0)
        if s.allowed_aets and calling not in s.allowed_aets:
            reason, rsd = "calling AE title not in allowed_aets", (0x01, 0x01, 0x03)
        elif s.require_called_aet and called != s.ae_title:
            reason, rsd = (f"called AE title {called!r} is not this node's {s.ae_title!r}",
                           (0x01, 0x01, 0x07))
        else:
            with self._door_lock:
                running = sum(1 for a in list(self._admitted) if a.is_alive())
                if running >= s.max_associations:
                    reason, rsd = (f"{running} associations running (max_associations)",
                                   (0x02, 0x03, 0x02))
                else:
                    self._admitted.add(assoc)
        if not reason:
            return
        log.warning("association from AE %r at %s:%d refused: %s", calling, host, port,
                    reason)
        assoc.acse.send_reject(*rsd)
        assoc.kill()

    @staticmethod
    def _on_rejected(event: evt.Event) -> None:
        """EVT_REJECTED: only pynetdicom's own backstop checks reject this way (ours do
        not fire this event)."""
        rq, rj = event.assoc.requestor, event.assoc.acceptor.primitive
        reason = (f"result {rj.result}, source {rj.result_source}, diagnostic "
                  f"{rj.diagnostic}" if rj is not None else "no reason")
        log.warning("association from AE %r at %s:%d refused by pynetdicom (%s)",
                    _shown_aet(rq.ae_title), *_peer((rq.address, rq.port)), reason)

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
