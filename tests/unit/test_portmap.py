"""The port-mapping client (PCP, then NAT-PMP) against gateways simulated in memory with a simulated clock."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_p2p.nat.portmap import (
    GIVE_UP_SEC,
    PORT,
    Mapped,
    MappingFailed,
    PortMapper,
    decode_pcp_response,
    encode_pcp_map,
)

GW = "192.168.1.1"
CLIENT = "192.168.1.2"
EXTERNAL = "203.0.113.9"


def v4mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address("::ffff:" + ip).packed


class PcpGateway:
    """Answers PCP MAP requests as RFC 6887 says (written from the RFC, not from the module under test)."""

    def __init__(self, lifetime: int = 600, external_port: int = 40000) -> None:
        self.lifetime = lifetime
        self.external_port = external_port
        self.requests: list[tuple[int, int, bytes]] = []  # (internal port, lifetime, client ip)
        self.mappings: dict[int, int] = {}

    def answer(self, data: bytes) -> bytes | None:
        if len(data) != 60 or data[0] != 2 or data[1] != 1:
            return None
        lifetime = struct.unpack_from("!I", data, 4)[0]
        nonce, proto, internal_port = data[24:36], data[36], struct.unpack_from("!H", data, 40)[0]
        self.requests.append((internal_port, lifetime, data[8:24]))
        granted = min(lifetime, self.lifetime)
        if granted:
            self.mappings[internal_port] = self.external_port
        else:
            self.mappings.pop(internal_port, None)
        header = struct.pack("!BBBBII", 2, 0x81, 0, 0, granted, 1234) + bytes(12)
        body = nonce + struct.pack("!B3xHH", proto, internal_port, self.external_port) + v4mapped(EXTERNAL)
        return header + body


class NatPmpGateway:
    """A NAT-PMP-only router (RFC 6886): a PCP request gets 'unsupported version' in a NAT-PMP header."""

    def __init__(self, external_port: int = 41000) -> None:
        self.external_port = external_port
        self.mappings: dict[int, int] = {}

    def answer(self, data: bytes) -> bytes | None:
        if data[:1] == b"\x02":
            return struct.pack("!BBHI", 0, 0x80 | data[1], 1, 99)
        if data == b"\x00\x00":
            return struct.pack("!BBHI", 0, 128, 0, 99) + ipaddress.IPv4Address(EXTERNAL).packed
        if len(data) == 12 and data[:2] == b"\x00\x01":
            internal_port, _sugg, lifetime = struct.unpack_from("!HHI", data, 4)
            if lifetime:
                self.mappings[internal_port] = self.external_port
            else:
                self.mappings.pop(internal_port, None)
            return struct.pack("!BBHIHHI", 0, 129, 0, 99, internal_port, self.external_port, min(lifetime, 600))
        return None


def drive(mapper: PortMapper, gateway: object | None, now: float, until: float) -> tuple[list[object], float, int]:
    """Run the mapper against a gateway (None = silence) on a simulated clock; (events, time, datagrams sent)."""
    events: list[object] = []
    sent = 0
    while now <= until:
        timer = mapper.get_timer()
        if timer is None:
            break
        now = max(now, timer)
        mapper.handle_timer(now)
        while outgoing := mapper.datagrams_to_send(now):  # answers may prompt more requests at once
            for data, addr in outgoing:
                sent += 1
                assert addr == (GW, PORT)
                reply = gateway.answer(data) if gateway is not None else None  # type: ignore[attr-defined]
                if reply is not None:
                    mapper.receive_datagram(reply, (GW, PORT), now)
        while (event := mapper.next_event()) is not None:
            events.append(event)
        if any(isinstance(e, (Mapped, MappingFailed)) for e in events):
            break
    return events, now, sent


def test_pcp_gateway_maps_the_port_and_the_request_names_our_address_and_port() -> None:
    gw = PcpGateway()
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0, random_bytes=lambda n: b"\x07" * n)
    events, _, _ = drive(mapper, gw, 0.0, 10.0)
    assert events == [Mapped((EXTERNAL, 40000), 600, "pcp")]
    assert gw.requests[0] == (14507, 7200, v4mapped(CLIENT))
    assert mapper.get_timer() == 300.0  # renewed at half the granted lifetime


def test_mapping_is_renewed_and_removed_at_stop() -> None:
    gw = PcpGateway(lifetime=120)
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0)
    drive(mapper, gw, 0.0, 1.0)
    assert mapper.get_timer() == 60.0
    mapper.handle_timer(60.0)
    for data, _ in mapper.datagrams_to_send(60.0):
        mapper.receive_datagram(gw.answer(data) or b"", (GW, PORT), 60.0)
    assert len(gw.requests) == 2 and mapper.mapped is not None and mapper.get_timer() == 120.0
    mapper.stop(61.0)
    for data, _ in mapper.datagrams_to_send(61.0):
        mapper.receive_datagram(gw.answer(data) or b"", (GW, PORT), 61.0)
    assert gw.requests[-1][1] == 0 and gw.mappings == {}
    assert mapper.get_timer() is None  # the gateway confirmed: nothing more to send


def test_natpmp_only_gateway_is_used_after_its_unsupported_version_answer() -> None:
    gw = NatPmpGateway()
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0)
    events, now, _ = drive(mapper, gw, 0.0, 10.0)
    assert events == [Mapped((EXTERNAL, 41000), 600, "natpmp")]
    assert now < 0.1  # no waiting for PCP retransmissions
    mapper.stop(now)
    for data, _ in mapper.datagrams_to_send(now):
        mapper.receive_datagram(gw.answer(data) or b"", (GW, PORT), now)
    assert gw.mappings == {}


def test_silent_network_gives_up_within_the_documented_time_and_sends_a_bounded_number_of_requests() -> None:
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0)
    events, now, sent = drive(mapper, None, 0.0, 100.0)
    assert len(events) == 1 and isinstance(events[0], MappingFailed)
    assert "no PCP or NAT-PMP gateway" in events[0].reason
    assert now <= GIVE_UP_SEC + 0.01
    assert sent <= 12 and mapper.get_timer() is None


def test_answers_from_elsewhere_or_with_another_nonce_are_ignored() -> None:
    gw = PcpGateway()
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0, random_bytes=lambda n: b"\x01" * n)
    mapper.handle_timer(0.0)
    (request, _), = mapper.datagrams_to_send(0.0)
    forged = PortMapper(GW, CLIENT, 14507, now=0.0, random_bytes=lambda n: b"\x02" * n)
    forged.handle_timer(0.0)
    (other, _), = forged.datagrams_to_send(0.0)
    reply = gw.answer(request) or b""
    mapper.receive_datagram(gw.answer(other) or b"", (GW, PORT), 0.01)  # another nonce
    mapper.receive_datagram(reply, ("192.168.1.66", PORT), 0.01)  # another host on the LAN
    mapper.receive_datagram(reply, (GW, 5350), 0.01)  # another port
    mapper.receive_datagram(reply + b"x", (GW, PORT), 0.01)  # wrong size
    assert mapper.next_event() is None and mapper.mapped is None
    mapper.receive_datagram(reply, (GW, PORT), 0.01)
    assert mapper.next_event() == Mapped((EXTERNAL, 40000), 600, "pcp")


def test_refusal_is_reported_with_the_gateways_reason() -> None:
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0, random_bytes=lambda n: b"\x03" * n)
    mapper.handle_timer(0.0)
    (request, _), = mapper.datagrams_to_send(0.0)
    ok = PcpGateway().answer(request) or b""
    refused = ok[:3] + bytes([2]) + ok[4:]  # NOT_AUTHORIZED
    mapper.receive_datagram(refused, (GW, PORT), 0.01)
    event = mapper.next_event()
    assert isinstance(event, MappingFailed) and "not authorized" in event.reason
    assert mapper.get_timer() is None


def test_pcp_request_round_trips_through_the_codec() -> None:
    request = encode_pcp_map(CLIENT, 14507, 7200, b"\x09" * 12)
    assert len(request) == 60
    reply = PcpGateway().answer(request) or b""
    answer = decode_pcp_response(reply)
    assert (answer.internal_port, answer.external_port, answer.external_ip) == (14507, 40000, EXTERNAL)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.sampled_from(["pcp", "natpmp"]))
def test_any_datagram_from_the_gateway_is_handled_without_error(data: bytes, protocol: str) -> None:
    mapper = PortMapper(GW, CLIENT, 14507, now=0.0)
    mapper.protocol = protocol
    mapper.handle_timer(0.0)
    mapper.receive_datagram(data, (GW, PORT), 0.01)
    event = mapper.next_event()
    if isinstance(event, Mapped):  # only well-formed answers can map, and only to a usable address
        assert 1 <= event.external[1] <= 65535
