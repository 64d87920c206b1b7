"""Issue 10 #6: STUN-shaped datagrams cost a node nothing unless they answer its own transaction, and a
relay answers only Binding requests of sane size; parsing is bounded."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest

from kachery_p2p.daemon.stun_client import StunClient
from kachery_p2p.nat import stun

TID = bytes(range(12))


def big_message(attributes: int = 16_000, message_type: int = stun.BINDING_SUCCESS) -> bytes:
    """The attack datagram: a valid header and thousands of empty unknown attributes (64 KB)."""
    body = struct.pack("!HH", 0x7F01, 0) * attributes
    return struct.pack("!HHI", message_type, len(body), stun.MAGIC_COOKIE) + TID + body


def test_parse_refuses_huge_messages_fast() -> None:
    data = big_message()
    assert stun.is_stun(data)
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(ValueError, match="too long"):
            stun.StunMessage.parse(data)
    assert (time.perf_counter() - started) / 100 < 0.002  # was ~29 ms each


def test_parse_refuses_more_than_the_attribute_cap() -> None:
    with pytest.raises(ValueError, match="attributes"):
        stun.StunMessage.parse(big_message(stun.MAX_ATTRIBUTES + 1))
    assert len(stun.StunMessage.parse(big_message(stun.MAX_ATTRIBUTES)).attributes) == 1  # duplicates: first kept


class _NoEndpoint:
    transport = None


def test_node_drops_unsolicited_stun_after_the_header_check(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    real_parse = stun.StunMessage.parse

    def counting_parse(data: bytes) -> stun.StunMessage:
        parsed.append(len(data))
        return real_parse(data)

    monkeypatch.setattr(stun.StunMessage, "parse", staticmethod(counting_parse))
    client = StunClient(_NoEndpoint())  # type: ignore[arg-type]
    for data in (big_message(), big_message(8), stun.binding_success(TID, ("192.0.2.1", 4000))):
        client.datagram_received(data, ("198.51.100.7", 3478))
    assert parsed == []  # nothing pending: nothing parsed
    assert client.reflexive == {}


def test_node_still_takes_the_answer_to_its_own_transaction() -> None:
    import asyncio

    async def scenario() -> Any:
        client = StunClient(_NoEndpoint())  # type: ignore[arg-type]
        transaction = stun.StunTransaction(("198.51.100.7", 3478), 0.0)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client._pending[transaction.transaction_id] = (transaction, future)
        client.datagram_received(stun.binding_success(b"\x01" * 12, ("192.0.2.9", 1)), ("198.51.100.7", 3478))
        assert not future.done()  # another transaction id
        answer = stun.binding_success(transaction.transaction_id, ("192.0.2.1", 4000))
        client.datagram_received(answer, ("198.51.100.7", 3478))
        return await asyncio.wait_for(future, 1)

    assert asyncio.run(scenario()) == ("192.0.2.1", 4000)


def test_relay_answers_only_binding_requests_of_sane_size() -> None:
    addr = ("203.0.113.5", 5000)
    answer = stun.binding_answer(stun.binding_request(TID), addr)
    assert answer is not None
    assert stun.StunMessage.parse(answer).mapped_address == addr
    padded = stun.StunMessage(stun.BINDING_REQUEST, TID, {"SOFTWARE": "x" * 1000}).encode()
    for data in (
        big_message(message_type=stun.BINDING_REQUEST),  # 64 KB request: no parse, no answer
        padded,  # a request larger than any sane one: the answer must not be an amplifier target
        stun.binding_success(TID, addr),  # responses, indications: dropped
        stun.StunMessage(0x0011, TID).encode(),  # Binding indication
        b"\x00\x01\x00\x00" + b"\x00" * 16,  # no magic cookie
    ):
        assert stun.binding_answer(data, addr) is None
    assert len(answer) <= 3 * len(stun.binding_request(TID))


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def test_relay_service_answers_sane_binding_requests_only() -> None:
    from kachery_p2p.daemon.relay_server import RelayService
    from kachery_p2p.relay.frames import classify
    from kachery_p2p.relay.limits import RelayLimits

    transport = _Transport()
    relay = RelayService(RelayLimits(), transport.sendto, lambda node_id: None)
    addr = ("203.0.113.5", 5000)
    padded = stun.StunMessage(stun.BINDING_REQUEST, TID, {"SOFTWARE": "x" * 1000}).encode()
    for data in (big_message(message_type=stun.BINDING_REQUEST), padded, stun.binding_success(TID, addr)):
        relay.datagram_received(classify(data), data, addr)
    assert transport.sent == []
    relay.datagram_received("stun", stun.binding_request(TID), addr)
    assert len(transport.sent) == 1 and relay.info()["relay"]["stun"] == 1
