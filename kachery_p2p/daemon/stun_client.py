"""STUN Binding requests from the node's own UDP socket (the one QUIC uses), so the reflexive address
learned is the one peers must use. With two or more relays answering, the node can tell
endpoint-independent from endpoint-dependent mapping (``nat.report.classify``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..nat import stun
from ..nat.report import NatReport
from .endpoint import Address, QuicEndpoint

log = logging.getLogger("kachery_p2p.stun")


class StunClient:
    def __init__(self, endpoint: QuicEndpoint) -> None:
        self.endpoint = endpoint
        self._pending: dict[bytes, tuple[stun.StunTransaction, asyncio.Future[Address | None]]] = {}
        self.reflexive: dict[Address, Address] = {}

    async def query(self, server: Address) -> Address | None:
        """One Binding transaction with retransmissions; the reflexive address or None."""
        loop = asyncio.get_running_loop()
        transaction = stun.StunTransaction(server, time.monotonic())
        future: asyncio.Future[Address | None] = loop.create_future()
        self._pending[transaction.transaction_id] = (transaction, future)
        try:
            while not transaction.done and not future.done():
                transport = self.endpoint.transport
                if transport is None:
                    return None
                for data, addr in transaction.datagrams_to_send(time.monotonic()):
                    transport.sendto(data, addr)
                timer = transaction.get_timer()
                if timer is None:
                    break
                try:
                    await within(asyncio.shield(future), max(0.0, timer - time.monotonic()))
                except asyncio.TimeoutError:
                    transaction.handle_timer(time.monotonic())
            result = future.result() if future.done() else transaction.result
        finally:
            self._pending.pop(transaction.transaction_id, None)
        if result is not None:
            self.reflexive[server] = result
        return result

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if stun.header_transaction_id(data) not in self._pending:
            return  # unsolicited: dropped after the header check, never parsed
        try:
            message = stun.StunMessage.parse(data)
        except ValueError:
            return
        entry = self._pending.get(message.transaction_id)
        if entry is None:
            return
        transaction, future = entry
        if transaction.receive(message, addr) and not future.done():
            future.set_result(transaction.result)

    def report(self, local: Address | None) -> dict[str, Any]:
        servers = list(self.reflexive)
        return NatReport.build(local, servers, dict(self.reflexive)).to_dict()
