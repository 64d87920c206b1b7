"""Issue 10 #1 against a real daemon: a flood of forged QUIC Initials (from the new peer's own IP, many
ports; nobody reads what comes back) while a real peer connects. Before QUIC Retry, each forged Initial
took a half-open slot (and ~3 ms of CPU for a QUIC connection), evicting the real peer's handshake from
its source's share before it could authenticate; now they get a stateless Retry and only the peer, which
echoes the token, gets a slot."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from aioquic.quic.connection import QuicConnection
from helpers import udp_port
from test_two_nodes import bootstrap_args, join, unique_channel, wait_for_channel_peer

from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import quic_configuration

RATE = 400  # forged Initials per second (about 4 Mbit/s)


def forged_initials(port: int, stop: threading.Event, counter: list[int]) -> None:
    conn = QuicConnection(configuration=quic_configuration(NodeIdentity.generate(), is_client=True))
    conn.connect(("127.0.0.1", port), now=time.monotonic())
    template = bytearray(conn.datagrams_to_send(now=time.monotonic())[0][0])
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * RATE) + 520  # the 520 at once, then RATE/s
            while counter[0] < due:
                template[6:14] = os.urandom(8)  # a fresh connection id: each wants its own slot
                sockets[counter[0] % len(sockets)].sendto(bytes(template), ("127.0.0.1", port))
                counter[0] += 1
            stop.wait(0.01)
    finally:
        for sock in sockets:
            sock.close()


def test_a_peer_connects_promptly_while_forged_initials_flood_the_node(daemon_factory: Any) -> None:
    channel = unique_channel()
    a = daemon_factory.start("alpha", ["-v"])
    join(channel, a)
    stop, counter = threading.Event(), [0]
    flood = threading.Thread(target=forged_initials, args=(udp_port(a), stop, counter), daemon=True)
    flood.start()
    try:
        time.sleep(1.0)  # the flood is on
        started = time.monotonic()
        b = daemon_factory.start("beta", ["-v", *bootstrap_args(a)])
        join(channel, b)
        wait_for_channel_peer(a, b, channel, timeout=10.0)
        elapsed = time.monotonic() - started
        assert not stop.is_set()
    finally:
        stop.set()
        flood.join(5)
    print(f"\nb connected in {elapsed:.1f} s (daemon start included) while {counter[0]} forged Initials arrived")
    assert a.run("node-info", "--json").returncode == 0  # a still answers
