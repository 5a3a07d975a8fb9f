"""The SR sender over TLS, against real servers: dcmtk's storescp with TLS and a required
client certificate (C-STORE), and Orthanc serving HTTPS (STOW-RS). Certificates come from
a throw-away CA made with the openssl command in the test."""

from __future__ import annotations

import socket
import socketserver
import ssl
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest

from mammo_density.config import load_settings
from mammo_density.plugin.outbox import Outbox
from tests.services import (
    HERE,
    free_port,
    require_binary,
    stop_process,
    wait_for_port,
)
from tests.test_outbox import _sr_instances, _store_images, _study_sr

pytestmark = pytest.mark.services


def _openssl(*args: str) -> None:
    subprocess.run([require_binary("openssl"), *args], check=True, capture_output=True,
                   timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=mammo-density test CA", "-keyout", str(d / "ca.key"), "-out",
             str(d / "ca.crt"), "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        ext = d / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       f"extendedKeyUsage={usage}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1", "-out",
                 str(d / f"{name}.crt"), "-extfile", str(ext))
    (d / "server.pem").write_text((d / "server.crt").read_text() + (d / "server.key").read_text())
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


@pytest.fixture
def tls_storescp(tmp_path: Path, pki):
    """dcmtk storescp speaking only TLS and requiring a client certificate from the CA."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [require_binary("storescp"), "+tls", str(pki["server_key"]), str(pki["server_crt"]),
         "+cf", str(pki["ca_crt"]), "--require-peer-cert", "-aet", "TLSPACS", "-od", str(out),
         str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 15)
        yield port, out
    finally:
        stop_process(proc)


def _outbox(tmp_path: Path, dest: str, **kw) -> Outbox:
    return Outbox(load_settings(data_dir=tmp_path / "data", sr_destinations=[dest],
                                sr_timeout_seconds=10.0, **kw))


def test_cstore_over_tls_with_client_certificate(tmp_path: Path, pki, tls_storescp) -> None:
    """Before: the SR sender had no TLS; a PACS that only speaks TLS could not get SRs."""
    port, received = tls_storescp
    _, sr = _study_sr()
    dest = f"tls:TLSPACS@127.0.0.1:{port}"
    # Without the client certificate the PACS refuses the handshake.
    anonymous = _outbox(tmp_path / "anon", dest, sr_tls_ca=pki["ca_crt"])
    anonymous.enqueue(sr, study_uid=sr.StudyInstanceUID)
    assert anonymous.deliver_due() == 0
    [row] = anonymous.pending()
    assert "TLS" in row["last_error"] and row["destination"] == dest
    # Without our CA, the PACS's certificate is not trusted.
    untrusted = _outbox(tmp_path / "untrusted", dest, sr_tls_cert=pki["client_crt"],
                        sr_tls_key=pki["client_key"])
    untrusted.enqueue(sr, study_uid=sr.StudyInstanceUID)
    assert untrusted.deliver_due() == 0
    assert list(received.iterdir()) == []
    # With both: delivered, and the SR arrived whole.
    good = _outbox(tmp_path / "good", dest, sr_tls_ca=pki["ca_crt"],
                   sr_tls_cert=pki["client_crt"], sr_tls_key=pki["client_key"])
    good.enqueue(sr, study_uid=sr.StudyInstanceUID)
    assert good.deliver_due() == 1
    [got] = [pydicom.dcmread(p) for p in received.iterdir()]
    assert got.SOPInstanceUID == sr.SOPInstanceUID


class TlsFront:
    """HTTPS in front of a plain-HTTP Orthanc, as a hospital's reverse proxy does it (Debian
    12's Orthanc 1.10 crashes on its own HTTPS): TLS terminated with Python's ssl module,
    bytes piped to and from Orthanc unchanged."""

    def __init__(self, backend_port: int, cert_pem: Path) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert_pem))
        front = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    tls = ctx.wrap_socket(self.request, server_side=True)
                except (OSError, ssl.SSLError):
                    return  # an untrusting client hangs up during the handshake
                with tls, socket.create_connection(("127.0.0.1", backend_port)) as back:
                    pump = threading.Thread(target=_pipe, args=(back, tls), daemon=True)
                    pump.start()
                    _pipe(tls, back)
                    pump.join(30)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        front.url = f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def test_stow_rs_over_https(tmp_path: Path, pki, orthanc_factory) -> None:
    server = orthanc_factory(script=HERE / "orthanc_stow.py", name="stow")
    sources, sr = _study_sr()
    _store_images(server, sources, tmp_path / "images")
    front = TlsFront(server.http_port, pki["server_pem"])
    try:
        url = f"{front.url}/dicom-web"
        untrusted = _outbox(tmp_path / "untrusted", url)  # the system CA store only
        untrusted.enqueue(sr, study_uid=sr.StudyInstanceUID)
        assert untrusted.deliver_due() == 0
        [row] = untrusted.pending()
        assert "SSLError" in row["last_error"] and "CERTIFICATE_VERIFY_FAILED" in \
            row["last_error"]
        assert _sr_instances(server, sr.StudyInstanceUID) == []
        good = _outbox(tmp_path / "good", url, sr_tls_ca=pki["ca_crt"])
        good.enqueue(sr, study_uid=sr.StudyInstanceUID)
        assert good.deliver_due() == 1, good.pending()
        [stored] = _sr_instances(server, sr.StudyInstanceUID)
        assert stored["SOPInstanceUID"] == sr.SOPInstanceUID
    finally:
        front.close()
