"""Birthday-paradox probing on real sockets: the pump around ``nat.birthday.BirthdayAttempt``.

When the plain punch to a relayed peer failed and one side's NAT maps per destination (endpoint-dependent,
learned by STUN against two relays) while the other's does not, the connecting side asks the peer over their
relayed session (``{"op": "birthday"}``: token, mapping, public address); the peer starts its side as it
answers. The relayed connection carries the transfer meanwhile.

- Easy side: the probes go out of the node's own socket; probes with this attempt's token reach us through
  ``PunchManager`` (unknown tokens are passed here).
- Hard side: ``HARD_SOCKETS`` extra UDP sockets (bound as the node's socket is), read here. When a pair is
  confirmed, the other sockets close at once and the winner carries the connection: the node's transport sends
  every datagram for the peer's address through it (``UdpTransport.route_via``) and what it receives is handed
  to the endpoint as if it came on the node's socket (``inject``). It closes when no connection to the peer
  is left.

Then the relayed connection moves to the direct path (``QuicEndpoint.direct_found``), as after a punch.
One attempt per peer at a time, at most one per ``RETRY_AFTER`` per peer on each side and ``MAX_RUNNING`` in
all; when both sides ask at once, the request of the smaller node id wins. ``--no-birthday-probing`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..channels.rendezvous import format_candidate, parse_candidate
from ..errors import RemoteProtocolError
from ..nat.birthday import MAIN_SOCKET, RETRY_AFTER, BirthdayAttempt, Role, choose_role
from ..quic import messages
from ..quic.identity import short_node_id
from ..relay.frames import PROBE, Probe, decode_probe
from .endpoint import Address, QuicEndpoint
from .session import PeerSession
from .udp import UdpTransport

log = logging.getLogger("kachery_p2p.birthday")

REQUEST_TIMEOUT = 10.0
MAX_RUNNING = 2  # attempts at once (a hard side opens HARD_SOCKETS sockets for each)
WINNER_CHECK_SEC = 5.0


class _Winner:
    """The hard side's winning socket: carries the connection to ``remote`` until no connection is left."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, remote: Address,
                 transport: UdpTransport, on_probe: Callable[[Probe, Address], None]) -> None:
        self.loop, self.sock, self.remote, self.transport = loop, sock, remote, transport
        self.on_probe = on_probe
        loop.add_reader(sock.fileno(), self._readable)
        transport.route_via(remote, self.send)

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, self.remote)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, source = self.sock.recvfrom(65535)
            except OSError:
                return
            if (source[0], source[1]) != self.remote:
                continue
            if data[:1] == bytes([PROBE]):
                with contextlib.suppress(ValueError):
                    self.on_probe(decode_probe(data), self.remote)
                    continue
            self.transport.inject(data, self.remote)

    def close(self) -> None:
        if self.transport.routed(self.remote):
            self.transport.unroute(self.remote)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class BirthdayManager:
    def __init__(self, endpoint: QuicEndpoint, node_id: str, mapping: Callable[[], str],
                 public_address: Callable[[], Address | None], bind_host: str = "0.0.0.0") -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self.mapping = mapping
        self.public_address = public_address
        self.bind_host = bind_host if "." in bind_host else "0.0.0.0"
        self._attempts: dict[bytes, tuple[BirthdayAttempt, asyncio.Event]] = {}
        self._busy: dict[str, str] = {}  # peer -> "asking" | "running"
        self._last: dict[str, float] = {}
        self._winners: dict[str, _Winner] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"attempts": 0, "direct": 0, "failed": 0, "declined": 0, "sockets_opened": 0}
        self.results: list[dict[str, Any]] = []  # the last attempts (for node-info), newest last

    # -- asking (the connecting side, after its punch failed) ---------------------------------------
    async def ask(self, session: PeerSession, peer: str) -> bool:
        """Try birthday probing with ``peer`` over our relayed ``session``; True if the path went direct."""
        now = time.monotonic()
        mine, public = self.mapping(), self.public_address()
        if (public is None or peer in self._busy or now - self._last.get(peer, -RETRY_AFTER) < RETRY_AFTER
                or mine not in ("endpoint-independent", "endpoint-dependent")):
            return False
        token = os.urandom(16)
        self._busy[peer] = "asking"
        try:
            reply, _ = await session.request({"op": "birthday", "token": token.hex(), "mapping": mine,
                                              "address": format_candidate(*public)}, timeout=REQUEST_TIMEOUT)
            answer = messages.check_ok(reply)
            role = choose_role(mine, str(answer.get("mapping")))
            address = parse_candidate(str(answer.get("address")))
        except (RemoteProtocolError, ValueError, OSError, asyncio.TimeoutError) as exc:
            log.info("birthday probing with %s not done: %s", short_node_id(peer), exc)
            self._not_asking(peer)
            return False
        if role is None or self._busy.get(peer) != "asking":  # (or the peer's own request won meanwhile)
            self._not_asking(peer)
            return False
        return await self._run(role, token, peer, address)

    def _not_asking(self, peer: str) -> None:
        if self._busy.get(peer) == "asking":  # not "running": the peer's request may have started one meanwhile
            del self._busy[peer]

    # -- answering --------------------------------------------------------------------------------
    async def handle(self, session: PeerSession, request: messages.Birthday) -> tuple[dict[str, Any], None]:
        peer = session.node_id or ""
        now = time.monotonic()
        mine, public = self.mapping(), self.public_address()
        role = choose_role(mine, request.mapping)
        busy = self._busy.get(peer)
        if busy == "asking" and peer < self.node_id:
            busy = None  # both asked at once: the smaller node id's request wins (ours will be declined)
        running = sum(1 for state in self._busy.values() if state == "running")
        if role is None or public is None or busy is not None or session.link.path.kind != "relayed" \
                or running >= MAX_RUNNING or now - self._last.get(peer, -RETRY_AFTER) < RETRY_AFTER:
            self.stats["declined"] += 1
            raise RemoteProtocolError(f"birthday probing declined (our mapping: {mine})", code="busy")
        try:
            address = parse_candidate(request.address)
        except ValueError:
            raise RemoteProtocolError("bad address", code="bad_request") from None
        task = asyncio.ensure_future(self._run(role, bytes.fromhex(request.token), peer, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"ok": True, "mapping": mine, "address": format_candidate(*public)}, None

    # -- probes on the node's socket (easy side) ----------------------------------------------------
    def probe_received(self, probe: Probe, addr: Address) -> bool:
        entry = self._attempts.get(probe.token)
        if entry is None or not entry[0].receive_probe(probe, MAIN_SOCKET, addr, time.monotonic()):
            return False
        entry[1].set()
        return True

    # -- one attempt --------------------------------------------------------------------------------
    async def _run(self, role: Role, token: bytes, peer: str, address: Address) -> bool:
        self._busy[peer] = "running"
        now = time.monotonic()
        # one entry per peer that ever had an attempt: keep only those still inside their RETRY_AFTER (bounded)
        self._last = {other: at for other, at in self._last.items() if now - at < RETRY_AFTER}
        self._last[peer] = now
        self.stats["attempts"] += 1
        loop = asyncio.get_running_loop()
        attempt = BirthdayAttempt(role, token, self.node_id, peer, address, time.monotonic())
        wake = asyncio.Event()
        self._attempts[token] = (attempt, wake)
        socks = self._open_sockets(loop, attempt, wake) if role == "hard" else []
        started = time.monotonic()
        moved = False
        log.info("birthday probing with %s as the %s side (%d sockets)", short_node_id(peer), role, len(socks))
        try:
            while True:
                now = time.monotonic()
                attempt.handle_timer(now)
                self._send(attempt, socks, now)
                for index in attempt.sockets_to_close():
                    self._close(loop, socks[index])
                if not moved and attempt.result is not None and attempt.result.address is not None:
                    moved = True  # move now (the peer confirms within a round trip); probes linger meanwhile
                    self._move(loop, peer, attempt, socks, wake)
                timer = attempt.get_timer()
                if timer is None or attempt.finished(now):
                    break
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(wake.wait(), max(0.0, timer - time.monotonic()))
        finally:
            self._attempts.pop(token, None)
            self._busy.pop(peer, None)
            winner = self._winners.get(peer)
            for sock in socks:
                if winner is None or sock is not winner.sock:
                    self._close(loop, sock)
        seconds = time.monotonic() - started
        self.results = [*self.results[-9:], {"peer": peer, "role": role, "direct": moved, "seconds": round(seconds, 2),
                                             "probesSent": attempt.stats["probes_sent"]}]
        self.stats["direct" if moved else "failed"] += 1
        if not moved:
            log.info("birthday probing with %s failed after %.1f s; staying relayed", short_node_id(peer), seconds)
        return moved

    def _move(self, loop: asyncio.AbstractEventLoop, peer: str, attempt: BirthdayAttempt, socks: list[socket.socket],
              wake: asyncio.Event) -> None:
        result = attempt.result
        assert result is not None and result.address is not None
        transport = self.endpoint.transport
        if result.index != MAIN_SOCKET:
            if not isinstance(transport, UdpTransport):
                return
            sock = socks[result.index]
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            old = self._winners.pop(peer, None)
            if old is not None:
                old.close()

            def on_probe(probe: Probe, addr: Address) -> None:
                if self._attempts.get(attempt.token, (None,))[0] is attempt:
                    if attempt.receive_probe(probe, result.index, addr, time.monotonic()):
                        wake.set()
                elif not probe.ack and probe.token == attempt.token and probe.sender == peer:
                    self._winners[peer].send(attempt.ack_datagram)  # the peer may still be confirming

            self._winners[peer] = _Winner(loop, sock, result.address, transport, on_probe)
            self._spawn(self._watch_winner(peer))
        moved = self.endpoint.direct_found(peer, result.address)
        log.info("birthday probing with %s: direct at %s (%s side, %d connection(s) moved)",
                 short_node_id(peer), format_candidate(*result.address), attempt.role, moved)

    async def _watch_winner(self, peer: str) -> None:
        while True:
            await asyncio.sleep(WINNER_CHECK_SEC)
            winner = self._winners.get(peer)
            if winner is None:
                return
            if not self.endpoint.has_peer_path(peer):
                self._winners.pop(peer, None)
                winner.close()
                return

    # -- sockets ------------------------------------------------------------------------------------
    def _open_sockets(self, loop: asyncio.AbstractEventLoop, attempt: BirthdayAttempt,
                      wake: asyncio.Event) -> list[socket.socket]:
        socks: list[socket.socket] = []
        for index in range(attempt.sockets):
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.bind((self.bind_host, 0))
            except OSError as exc:  # out of file descriptors: probe with what we have
                log.info("birthday probing: %d sockets opened of %d (%s)", index, attempt.sockets, exc)
                break
            loop.add_reader(sock.fileno(), self._readable, attempt, index, sock, wake)
            socks.append(sock)
        self.stats["sockets_opened"] += len(socks)
        attempt.sockets = len(socks)
        return socks

    def _readable(self, attempt: BirthdayAttempt, index: int, sock: socket.socket, wake: asyncio.Event) -> None:
        for _ in range(16):
            try:
                data, source = sock.recvfrom(2048)
            except OSError:
                return
            try:
                probe = decode_probe(data)
            except ValueError:
                continue
            if attempt.receive_probe(probe, index, (source[0], source[1]), time.monotonic()):
                wake.set()

    def _send(self, attempt: BirthdayAttempt, socks: list[socket.socket], now: float) -> None:
        transport = self.endpoint.transport
        for index, data, addr in attempt.datagrams_to_send(now):
            if index == MAIN_SOCKET:
                if transport is not None:
                    transport.sendto(data, addr)
                continue
            if index < len(socks):
                with contextlib.suppress(OSError):
                    socks[index].sendto(data, addr)

    @staticmethod
    def _close(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            sock.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def carries(self, addr: Address) -> bool:
        """Whether a winning socket carries the datagrams for ``addr`` (a direct UDP path, not the TCP relay)."""
        return any(winner.remote == addr for winner in self._winners.values())

    def info(self) -> dict[str, Any]:
        return {"stats": dict(self.stats), "recent": list(self.results),
                "winners": {short_node_id(p): format_candidate(*w.remote) for p, w in self._winners.items()}}

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for winner in self._winners.values():
            winner.close()
        self._winners.clear()
