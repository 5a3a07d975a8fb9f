"""The listener's door under hostile or mistaken peers: TLS clients that never handshake,
idle TCP connections, wrong called AE titles, and a WARNING line for every refusal.

Real listener, real sockets, real pynetdicom and dcmtk peers."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests import test_listener
from tests.mgdata import mg
from tests.services import echoscu, require_binary
from tests.test_listener import client

pytestmark = pytest.mark.services  # dcmtk's echoscu, openssl

LOGGER = "mammo_density.plugin.listener"

node_factory = test_listener.node_factory  # the listener tests' nodes on free ports


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return key, cert


def _tls_client_ctx(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ctx.check_hostname = False
    return ctx


def _idle(port: int, n: int) -> list[socket.socket]:
    """``n`` TCP connections that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING and "refused" in r.getMessage()]


def _wait_for(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_silent_tls_client_does_not_block_the_door(node_factory, tmp_path, caplog):
    """Before: the handshake ran inside accept() with no timeout, so one TCP connection
    that never started TLS blocked every later association."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    key, cert = _self_signed(tmp_path)
    node = node_factory(tls_cert=cert, tls_key=key, tls_handshake_timeout=2.0)
    silent = _idle(node.port, 3)
    try:
        time.sleep(0.3)  # let the accept loop pick them up
        ae = client()
        ae.connection_timeout = ae.acse_timeout = 5
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MAMMODENSITY",
                             tls_args=(_tls_client_ctx(cert), None))
        assert assoc.is_established, "a silent TCP connection blocked the TLS listener"
        assert time.monotonic() - started < 2.0  # did not wait for the silent ones
        assert assoc.send_c_store(mg(generate_uid(), "R", "CC")).Status == 0
        assoc.release()
        # The silent connections are closed after tls_handshake_timeout, with a log line.
        for sock in silent:
            sock.settimeout(10)
            assert sock.recv(1) == b""
        _wait_for(lambda: sum("TLS handshake failed" in m for m in _refusals(caplog)) >= 3)
        line = next(m for m in _refusals(caplog) if "TLS handshake failed" in m)
        assert "127.0.0.1:" in line and "no TLS handshake within 2 s" in line
    finally:
        for sock in silent:
            sock.close()


def test_tls_handshake_has_a_total_deadline(node_factory, tmp_path, caplog):
    """A client that trickles its handshake a byte at a time is cut off after
    tls_handshake_timeout in all, not per read."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    key, cert = _self_signed(tmp_path)
    node = node_factory(tls_cert=cert, tls_key=key, tls_handshake_timeout=2.0)
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(200)  # a ClientHello's start
    (sock,) = _idle(node.port, 1)
    with sock:
        started = time.monotonic()
        closed = False
        for byte in hello:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.5)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:  # cut off with a reset: the node closed with bytes unread
                closed = True
                break
            if time.monotonic() - started > 10:
                break
        assert closed, "the trickling handshake was never cut off"
        assert time.monotonic() - started < 6
    _wait_for(lambda: any("no TLS handshake within 2 s" in m for m in _refusals(caplog)))


def test_plain_client_to_tls_listener_is_logged(node_factory, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    key, cert = _self_signed(tmp_path)
    node = node_factory(tls_cert=cert, tls_key=key)
    assert echoscu(node.port).returncode != 0
    _wait_for(lambda: any("TLS handshake failed" in m for m in _refusals(caplog)))


def test_sixteen_idle_connections_do_not_lock_others_out(node_factory):
    """Before: pynetdicom counted bare connections against max_associations (16): 16 idle
    sockets made every sender get A-ASSOCIATE-RJ for the 30 s ACSE timeout."""
    node = node_factory()  # max_associations 16, the default
    assert node.settings.max_associations == 16
    idle = _idle(node.port, 16)
    try:
        time.sleep(0.5)
        assert echoscu(node.port).returncode == 0
        assoc = client().associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
        assert assoc.is_established
        assert assoc.send_c_store(mg(generate_uid(), "L", "CC")).Status == 0
        assoc.release()
    finally:
        for sock in idle:
            sock.close()


def test_idle_connection_closed_after_acse_timeout(node_factory):
    node = node_factory(acse_timeout=1.0)
    (sock,) = _idle(node.port, 1)
    with sock:
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 5


def test_pending_connection_cap_refuses_at_accept(node_factory, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node = node_factory(max_pending_connections=2, acse_timeout=30)
    idle = _idle(node.port, 2)
    try:
        _wait_for(lambda: node.listener._pending_connections() == 2)
        assert echoscu(node.port).returncode != 0
        assert any("max_pending_connections" in m and "127.0.0.1:" in m
                   for m in _refusals(caplog))
    finally:
        for sock in idle:
            sock.close()
    _wait_for(lambda: node.listener._pending_connections() == 0)
    assert echoscu(node.port).returncode == 0


def test_association_limit_counts_associations_and_logs(node_factory, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node = node_factory(max_associations=1)
    first = client("FIRST").associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert first.is_established
    second = client("SECOND").associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert second.is_rejected
    assert second.acceptor.primitive.result == 0x02  # transient: try again later
    first.release()
    line = next(m for m in _refusals(caplog) if "max_associations" in m)
    assert "'SECOND'" in line and "127.0.0.1:" in line


def test_wrong_called_ae_refused_and_logged(node_factory, caplog):
    """Before: any called AE title was accepted; a misconfigured sender never noticed."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node = node_factory()
    assoc = client("MODALITY1").associate("127.0.0.1", node.port, ae_title="ANY-SCP")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    assert echoscu(node.port, aet="ANY-SCP").returncode != 0
    line = next(m for m in _refusals(caplog) if "called AE title" in m)
    assert "'MODALITY1'" in line and "'ANY-SCP'" in line and "127.0.0.1:" in line
    assert echoscu(node.port).returncode == 0
    lenient = node_factory(require_called_aet=False)
    assert echoscu(lenient.port, aet="ANY-SCP").returncode == 0


def test_calling_ae_and_host_refusals_are_logged(node_factory, caplog):
    """Before: AE rejections left no log line at all."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node = node_factory(allowed_aets=["PACS"])
    assoc = client("INTRUDER").associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    line = next(m for m in _refusals(caplog) if "allowed_aets" in m)
    assert "'INTRUDER'" in line and "127.0.0.1:" in line
    far = node_factory(allowed_hosts=["10.0.0.0/8"])
    assert echoscu(far.port).returncode != 0
    _wait_for(lambda: any("allowed_hosts" in m and "127.0.0.1:" in m for m in _refusals(caplog)))
