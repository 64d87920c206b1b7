"""A node's side of a relay: publish where we are and look up channel peers.

While our session with a relay is up, we publish a signed rendezvous record (our channels'
rendezvous ids and candidate addresses) every PUBLISH_INTERVAL (at once after a channel change) and
look up peers sharing a rendezvous id every LOOKUP_INTERVAL. Each verified peer record is handed to
``on_peer``; connecting to it is the connector's job (``daemon/connect.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from kachery_p2p.daemon.deadline import within

from ..channels.rendezvous import decode_record, encode_record
from ..errors import LocalProtocolError, RemoteProtocolError
from ..quic import messages
from ..quic.identity import NodeIdentity
from .endpoint import Address, LinkClosed
from .session import PeerSession

log = logging.getLogger("kachery_p2p.rendezvous")

PUBLISH_INTERVAL = 60.0
RECORD_LIFETIME = 180.0
LOOKUP_INTERVAL = 10.0
PING_TIMEOUT = 5.0  # after a request the relay did not answer: does the path still carry a QUIC PING?


class RelayClient:
    """Runs while our session with one relay is up."""

    def __init__(
        self,
        session: PeerSession,
        identity: NodeIdentity,
        label: str,
        rendezvous_ids: Callable[[], list[str]],
        candidates: Callable[[], list[str]],
        stun_query: Callable[[Address], Awaitable[Address | None]],
        on_peer: Callable[[RelayClient, str], None],
        frame_tokens: dict[Address, bytes] | None = None,
    ) -> None:
        self.session = session
        self.frame_tokens = frame_tokens if frame_tokens is not None else {}
        self.identity = identity
        self.label = label
        self.rendezvous_ids = rendezvous_ids
        self.candidates = candidates
        self.stun_query = stun_query
        self.on_peer = on_peer
        self.relay_addr = session.link.path.addr
        self.observed: str | None = None
        self._wake = asyncio.Event()
        self._queried = False
        self._stun: asyncio.Future[None] | None = None

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        if not self._queried:
            # Not awaited: the first publish must not wait for STUN (a relay drops sessions that
            # register nothing); we publish again with the reflexive address once it is known.
            self._queried = True
            self._stun = asyncio.ensure_future(self._query_stun())
        last_publish = 0.0
        while not self.session.link.is_closed:
            try:
                now = time.monotonic()
                if now - last_publish > PUBLISH_INTERVAL or self._wake.is_set():
                    await self.publish()
                    last_publish = now
                self._wake.clear()
                await self.lookup()
            except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, LocalProtocolError) as exc:
                log.info("rendezvous with relay %s failed: %s", self.session.link.path.describe(), exc)
                if isinstance(exc, asyncio.TimeoutError) and not await self._path_answers():
                    # The path is gone (we moved to another address, or a NAT forgot us): end the session
                    # now, so that it is dialled again at once, instead of waiting out the idle timeout
                    # while peers keep trying to reach us through a relay that no longer has us.
                    log.info("relay %s does not answer a ping: dialling it again", self.session.link.path.describe())
                    self.session.link.close("relay not answering")
                    self.session.link.abort("relay not answering")
                    return
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wake.wait(), LOOKUP_INTERVAL)

    async def _path_answers(self) -> bool:
        """Whether a QUIC PING to the relay is acknowledged within PING_TIMEOUT (a busy relay's QUIC stack
        still acknowledges at once, even when its application is slow to answer requests)."""
        try:
            await within(self.session.link.ping(), PING_TIMEOUT)
        except (asyncio.TimeoutError, LinkClosed):
            return False
        return True

    async def _query_stun(self) -> None:
        reflexive = await self.stun_query(self.relay_addr)
        log.info("relay %s sees us at %s (STUN)", self.session.link.path.describe(), reflexive)
        if reflexive is not None:
            self.trigger()

    async def publish(self) -> None:
        ids = self.rendezvous_ids()[:64]
        record = encode_record(self.identity, self.label, ids, self.candidates()[:8], time.time(), RECORD_LIFETIME)
        reply, _ = await self.session.request({"op": "publish", "record": record, "frameToken": True}, timeout=10)
        observed = messages.check_ok(reply).get("observed")
        if isinstance(observed, str):
            self.observed = observed
        token = reply.get("frameToken")  # relays of earlier versions issue none (and know no 0x22 frame)
        if isinstance(token, str) and messages.is_hex32(token):
            self.frame_tokens[self.relay_addr] = bytes.fromhex(token)
        else:
            self.frame_tokens.pop(self.relay_addr, None)

    async def lookup(self) -> None:
        ids = self.rendezvous_ids()
        if not ids:
            return
        reply, _ = await self.session.request({"op": "lookup", "rendezvousIds": ids}, timeout=10)
        peers = messages.check_ok(reply).get("peers", [])
        if not isinstance(peers, list):
            return
        now = time.time()
        for entry in peers[:64]:
            try:
                record = decode_record(entry["record"], now)
            except (RemoteProtocolError, KeyError, TypeError):
                continue  # a record we cannot verify is ignored: the relay cannot forge peers
            if record.node_id != self.identity.node_id:
                self.on_peer(self, record.node_id)
