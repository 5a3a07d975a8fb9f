"""TCP options of the node's DICOM connections (plugin/tcp.py): Nagle off on both ends."""

from __future__ import annotations

import socket

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from mammo_density.plugin import tcp
from tests import test_listener

node_factory = test_listener.node_factory  # the listener tests' nodes on free ports


def _nodelay(assoc) -> int:
    return assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_handlers_turn_nagle_off_on_both_ends() -> None:
    seen: list[int] = []

    def on_echo(event: evt.Event) -> int:
        seen.append(_nodelay(event.assoc))
        return 0x0000

    server_ae = AE(ae_title="SCP")
    server_ae.add_supported_context(Verification)
    server = server_ae.start_server(("127.0.0.1", 0), block=False,
                                    evt_handlers=[(evt.EVT_C_ECHO, on_echo), *tcp.HANDLERS])
    try:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="SCP",
                             evt_handlers=tcp.HANDLERS)
        assert assoc.is_established
        try:
            assert _nodelay(assoc) != 0
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert seen and seen[0] != 0


def test_listener_connections_have_nagle_off(node_factory) -> None:
    node = node_factory()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(*node.listener.address, ae_title="MAMMODENSITY")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        acceptors = [a for a in node.listener._ae.active_associations if a.is_acceptor]
        assert acceptors and all(_nodelay(a) != 0 for a in acceptors)
    finally:
        assoc.release()


def test_the_sr_sender_binds_the_handlers() -> None:
    from mammo_density.plugin import send

    assert send.HANDLERS is tcp.HANDLERS
