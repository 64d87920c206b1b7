"""NAT classification (pure) and ``run_nat_check`` against tiny STUN servers on 127.0.0.x only."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from kachery_p2p.cli.nat_check import run_nat_check
from kachery_p2p.nat.report import MappingBehaviour, NatReport, classify
from kachery_p2p.nat.stun import BINDING_REQUEST, StunMessage, binding_success, is_stun

Address = tuple[str, int]
EIM = MappingBehaviour.ENDPOINT_INDEPENDENT
EDM = MappingBehaviour.ENDPOINT_DEPENDENT
S1, S1B, S2 = ("198.51.100.1", 3478), ("198.51.100.1", 3479), ("198.51.100.2", 3478)
PUBLIC = ("203.0.113.7", 40000)


@pytest.mark.parametrize(
    ("local", "answers", "local_ips", "expected"),
    [
        (("192.168.1.5", 5000), {}, (), MappingBehaviour.UNKNOWN),
        (("198.51.100.9", 5000), {S1: ("198.51.100.9", 5000)}, (), MappingBehaviour.NO_NAT),
        (("192.168.1.5", 5000), {S1: PUBLIC}, (), MappingBehaviour.UNKNOWN),
        (("192.168.1.5", 5000), {S1: PUBLIC, S2: PUBLIC}, (), EIM),
        (("192.168.1.5", 5000), {S1: PUBLIC, S1B: PUBLIC}, (), MappingBehaviour.UNKNOWN),  # one server IP
        (("192.168.1.5", 5000), {S1: PUBLIC, S1B: ("203.0.113.7", 40001)}, (), EDM),  # port-dependent
        (("192.168.1.5", 5000), {S1: PUBLIC, S2: ("203.0.113.7", 40001)}, (), EDM),
        (("192.168.1.5", 5000), {S1: PUBLIC, S2: ("203.0.113.8", 40000)}, (), EDM),
        (None, {S1: ("198.51.100.9", 5000), S2: ("198.51.100.9", 5000)}, (), EIM),
        (("198.51.100.9", 5000), {S1: ("198.51.100.9", 5000), S2: ("198.51.100.9", 5000)}, (), MappingBehaviour.NO_NAT),
        # a wildcard bind and a port-preserving NAT: the port alone must not mean "no NAT"
        (("0.0.0.0", 40000), {S1: PUBLIC}, (), MappingBehaviour.UNKNOWN),
        (("0.0.0.0", 40000), {S1: PUBLIC, S2: PUBLIC}, (), EIM),
        (("0.0.0.0", 40000), {S1: PUBLIC}, ("192.168.1.5",), MappingBehaviour.UNKNOWN),
        (("0.0.0.0", 40000), {S1: PUBLIC}, ("203.0.113.7",), MappingBehaviour.NO_NAT),
        (("0.0.0.0", 40001), {S1: PUBLIC}, ("203.0.113.7",), MappingBehaviour.UNKNOWN),
        # IPv4-mapped IPv6 spellings are the same address
        (("10.0.0.2", 1), {("::ffff:198.51.100.1", 3478): ("::ffff:203.0.113.7", 40000), S2: PUBLIC}, (), EIM),
        # IPv4 and IPv6 answers are never compared with each other
        (("10.0.0.2", 1), {S1: PUBLIC, ("2001:db8::1", 3478): ("2001:db8::99", 40000)}, (), MappingBehaviour.UNKNOWN),
    ],
)
def test_classify(
    local: Address | None, answers: dict[Address, Address], local_ips: tuple[str, ...], expected: MappingBehaviour
) -> None:
    assert classify(local, answers, local_ips) is expected


def test_report_to_dict_is_json_and_formats_addresses() -> None:
    report = NatReport.build(("0.0.0.0", 5000), [S1, S2, ("2001:db8::1", 3478)], {S1: PUBLIC, S2: PUBLIC})
    assert report.udp_works and report.reflexive_address == PUBLIC and report.mapping is EIM
    d = json.loads(json.dumps(report.to_dict()))
    assert d["reflexive_address"] == "203.0.113.7:40000"
    assert d["mapping"] == "endpoint-independent"
    assert d["servers_asked"] == ["198.51.100.1:3478", "198.51.100.2:3478", "[2001:db8::1]:3478"]
    assert d["servers_answered"] == {"198.51.100.1:3478": "203.0.113.7:40000", "198.51.100.2:3478": "203.0.113.7:40000"}
    assert d["udp_works"] is True and "should work" in d["hole_punching"]
    silent = NatReport.build(None, [S1], {}).to_dict()
    assert silent["udp_works"] is False and silent["reflexive_address"] is None and silent["mapping"] == "unknown"


# ---- run_nat_check against tiny servers on loopback --------------------------------------------


def _classic_response(request: bytes, addr: Address) -> bytes:
    """What an RFC 3489 server answers to a cookie-less request: MAPPED-ADDRESS, 16-byte id echoed."""
    attr = struct.pack("!HHBBH", 0x0001, 8, 0, 1, addr[1]) + socket.inet_aton(addr[0])
    return struct.pack("!HH", 0x0101, len(attr)) + request[4:20] + attr


Responder = Callable[[bytes, Address], bytes | None]


def rfc8489_only(mapper: Callable[[Address], Address] = lambda a: a) -> Responder:
    def respond(data: bytes, addr: Address) -> bytes | None:
        if not is_stun(data):
            return None  # drops pystun3's cookie-less requests, as the relay does
        message = StunMessage.parse(data)
        if message.message_type != BINDING_REQUEST:
            return None
        return binding_success(message.transaction_id, mapper(addr))

    return respond


def also_rfc3489(data: bytes, addr: Address) -> bytes | None:
    if is_stun(data):
        return rfc8489_only()(data, addr)
    return _classic_response(data, addr) if data[:2] == b"\x00\x01" and len(data) >= 20 else None


@contextmanager
def stun_server(respond: Responder | None, host: str = "127.0.0.1") -> Iterator[Address]:
    """A UDP server on ``host`` that answers with ``respond`` (None: never answers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except OSError:
                continue
            answer = respond(data, (addr[0], addr[1])) if respond else None
            if answer is not None:
                sock.sendto(answer, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_nat_check_on_loopback_sees_no_nat() -> None:
    with stun_server(rfc8489_only()) as server:
        result = run_nat_check([server], timeout=2.0, use_pystun=False)
    json.dumps(result)
    local_port = int(result["local_address"].rsplit(":", 1)[1])
    assert result["local_address"] == f"0.0.0.0:{local_port}"  # one wildcard socket, like the daemon's
    assert result["reflexive_address"] == f"127.0.0.1:{local_port}"
    assert result["udp_works"] is True
    assert result["mapping"] == "no-nat"
    assert result["servers"][0]["software"] == "kachery-p2p"
    assert result["servers"][0]["error"] is None
    assert "rfc3489" not in result


def test_nat_check_explicit_bind_and_two_server_ips() -> None:
    with stun_server(rfc8489_only(), "127.0.0.1") as a, stun_server(rfc8489_only(), "127.0.0.2") as b:
        result = run_nat_check([a, b], timeout=2.0, use_pystun=False, bind=("127.0.0.1", 0))
    assert result["local_address"] == result["reflexive_address"]
    assert result["mapping"] == "no-nat" and len(result["servers_answered"]) == 2


@pytest.mark.parametrize(("second_port", "expected"), [(40000, "endpoint-independent"), (40001, "endpoint-dependent")])
def test_nat_check_compares_two_servers(second_port: int, expected: str) -> None:
    """Servers that report a NAT's mapping instead of the loopback source (a fake NAT)."""
    first = rfc8489_only(lambda _a: ("203.0.113.7", 40000))
    second = rfc8489_only(lambda _a: ("203.0.113.7", second_port))
    with stun_server(first, "127.0.0.1") as a, stun_server(second, "127.0.0.2") as b:
        result = run_nat_check([a, b], timeout=2.0, use_pystun=False)
    assert result["mapping"] == expected
    assert result["reflexive_address"] == "203.0.113.7:40000"


def test_nat_check_silent_server_means_udp_does_not_work() -> None:
    with stun_server(None) as server:
        started = time.monotonic()
        result = run_nat_check([server], timeout=0.5, use_pystun=False)
        elapsed = time.monotonic() - started
    assert result["udp_works"] is False and result["reflexive_address"] is None
    assert result["mapping"] == "unknown"
    assert "no answer" in result["servers"][0]["error"]
    assert elapsed < 1.5


def test_nat_check_unresolvable_and_empty_server_lists() -> None:
    result = run_nat_check([("::1", 3478)], timeout=0.3, use_pystun=True)  # no DNS
    assert result["udp_works"] is False and "cannot resolve" in result["servers"][0]["error"]
    assert "rfc3489" not in result
    assert run_nat_check([], timeout=0.1)["notes"] == ["no STUN servers given: nothing to ask"]


def test_pystun3_against_an_rfc8489_only_server_says_blocked_and_we_explain() -> None:
    with stun_server(rfc8489_only()) as server:
        result = run_nat_check([server], timeout=0.5)
    rfc3489 = result["rfc3489"]
    assert result["udp_works"] is True
    assert rfc3489["nat_type"] == "Blocked"
    assert any("'Blocked' is wrong here" in note for note in rfc3489["notes"])
    assert any("OTHER-ADDRESS" in note for note in rfc3489["notes"])


def test_pystun3_against_a_classic_server_without_change_request() -> None:
    with stun_server(also_rfc3489) as server:
        result = run_nat_check([server], timeout=0.5)
    rfc3489 = result["rfc3489"]
    assert rfc3489["nat_type"] == "Open Internet"  # CHANGE-REQUEST ignored, and pystun3 cannot tell
    assert rfc3489["external_address"].startswith("127.0.0.1:")
    assert any("not meaningful" in note for note in rfc3489["notes"])


def test_pystun3_crash_on_an_odd_reply_is_reported_not_raised() -> None:
    def odd(data: bytes, addr: Address) -> bytes | None:
        return rfc8489_only()(data, addr) if is_stun(data) else b"\x12\x34" + bytes(18)

    with stun_server(odd) as server:
        result = run_nat_check([server], timeout=0.5)
    assert result["udp_works"] is True
    assert "KeyError" in result["rfc3489"]["error"]
    assert result["rfc3489"]["nat_type"] is None
