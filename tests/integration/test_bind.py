"""``--bind`` repeatable: a node told to listen on 127.0.0.2 and 127.0.0.3 answers there (from the address asked),
and says nothing to datagrams or TCP connections sent to this host's other addresses (127.0.0.1).
Also ``kachery-p2p-nat-check`` naming the relay transport of the node connected to that relay."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

import pytest
from helpers import udp_port, wait_until
from test_udp_socket import Echo, _ask, _client

from kachery_p2p.daemon import udp
from kachery_p2p.nat import stun


def _silent(address: tuple[str, int], payload: bytes, wait: float = 0.5) -> bool:
    """True when nothing answers ``payload`` sent to ``address`` within ``wait`` seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.connect(address)
        sock.send(payload)
        try:
            sock.recv(100)
        except (TimeoutError, ConnectionRefusedError):
            return True
    return False


def test_restrict_drops_datagrams_to_other_addresses_and_sends_from_a_bound_one() -> None:
    async def main() -> None:
        transport, echo = await udp.open_udp(Echo, "0.0.0.0", 0)
        try:
            transport.restrict(["127.0.0.2", "127.0.0.3"])
            port = udp.local_address(transport)[1]
            for address in ("127.0.0.2", "127.0.0.3"):
                with _client(socket.AF_INET, (address, port)) as client:  # connected: the reply's source is checked
                    assert await _ask(client, address.encode()) == b"re:" + address.encode()
            assert await asyncio.to_thread(_silent, ("127.0.0.1", port), b"x")
            assert transport.stats["not_bound"] == 1 and len(echo.seen) == 2
            # A first datagram to a remote never heard from leaves from the first bound address, not 127.0.0.1.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
                listener.bind(("127.0.0.1", 0))
                listener.settimeout(3)
                transport.sendto(b"hello", listener.getsockname())
                data, source = await asyncio.to_thread(listener.recvfrom, 100)
            assert data == b"hello" and source == ("127.0.0.2", port)
        finally:
            transport.close()

    asyncio.run(main())


def _stun_answer(address: tuple[str, int]) -> Any:
    """The mapped address a relay's STUN server tells a client at ``address`` (checked to come from there)."""
    with _client(socket.AF_INET, address) as sock:
        transaction = os.urandom(12)
        sock.send(stun.binding_request(transaction))
        message = stun.StunMessage.parse(sock.recv(2000))
    assert message.transaction_id == transaction
    return message.mapped_address


def test_relay_with_two_bind_addresses(daemon_factory: Any) -> None:
    relay = daemon_factory.start("relay", ["--relay", "--bind", "127.0.0.2", "--bind", "127.0.0.3"])
    port = udp_port(relay)
    for address in ("127.0.0.2", "127.0.0.3"):
        assert _stun_answer((address, port))[0] == "127.0.0.1"
    assert _silent(("127.0.0.1", port), stun.binding_request(os.urandom(12)))
    # The relay's TLS/TCP transport listens on the bound addresses only, too.
    socket.create_connection(("127.0.0.3", port), timeout=3).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    # A node bootstrapping to the second address registers and stays connected.
    node = daemon_factory.start("node", ["--bootstrap", f"127.0.0.3:{port}"])
    wait_until(lambda: any(p.get("nodeId") == relay.node_id for p in node.api("get_peers")), 20,
               "the node connected to the relay at 127.0.0.3", output=node.log_text)
    # kachery-p2p-nat-check (next to the daemon) says which transport reaches the relay, and why.
    check = node.run("nat-check", "--server", f"127.0.0.3:{port}", "--no-rfc3489")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"Relay transport: 127.0.0.3:{port} over UDP (the relay answers over UDP)" in check.stdout
    as_json = json.loads(node.run("nat-check", "--server", f"127.0.0.3:{port}", "--no-rfc3489", "--json").stdout)
    assert as_json["daemon"]["relayTransports"] == [
        {"relay": f"127.0.0.3:{port}", "transport": "udp", "why": "the relay answers over UDP"}]


def test_bind_refuses_what_is_not_an_address(daemon_factory: Any) -> None:
    handle = daemon_factory.new("bad")
    for bad in ("example.org", "0.0.0.0"):
        proc = handle.spawn(["--bind", bad])
        assert proc.wait(30) != 0
        log = handle.log_text()
        assert "--bind needs" in log and "Traceback" not in log
