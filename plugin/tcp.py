"""TCP options of the node's DICOM connections: no Nagle, no delayed acknowledgement.

DCMTK, on which Orthanc, dcmtk's tools and many PACS are built, writes a PDU in more than
one ``send()`` (the 12 bytes of PDU and PDV headers, then the rest) and leaves Nagle's
algorithm on, so the rest waits until the peer acknowledges the headers; Linux delays
that acknowledgement by up to 40 ms when it has nothing to send back. pynetdicom, on our
side, sets neither option. Every C-STORE response from such a peer therefore came
~40 ms late, and our own small PDUs waited behind Nagle too: delivering one density SR
to Orthanc on loopback took ~130 ms, of which ~95 ms were such waits (with these
options: ~35 ms; benchmarks/README.md).

:data:`HANDLERS` are pynetdicom event handlers for ``ae.associate(...,
evt_handlers=HANDLERS)`` and ``ae.start_server(..., evt_handlers=...)``: the connection
gets ``TCP_NODELAY`` when it opens, and ``TCP_QUICKACK`` (Linux; a one-shot switch the
kernel turns off again by itself) after every PDU it sends or receives, so the peer's
next header is acknowledged at once. Any socket error is ignored: the options only
change timing, never what is sent.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from pynetdicom import evt

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _socket(event: evt.Event) -> Any:
    try:
        return event.assoc.dul.socket.socket
    except AttributeError:
        return None


def _quick_ack(event: evt.Event) -> None:
    sock = _socket(event)
    if sock is not None and _QUICKACK is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _on_open(event: evt.Event) -> None:
    sock = _socket(event)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _quick_ack(event)


HANDLERS: list[tuple[evt.NotificationEvent, Any]] = [
    (evt.EVT_CONN_OPEN, _on_open),
    (evt.EVT_DATA_SENT, _quick_ack),
    (evt.EVT_DATA_RECV, _quick_ack),
]

__all__ = ["HANDLERS"]
