"""Which path a connection's datagrams take: straight to the peer's UDP address, or through a relay.

Sans-IO (iroh's design, below QUIC): aioquic sees one stable address per peer connection and never
migrates; this object picks, per datagram, where it really goes, and counts bytes per path.

- A connection that starts relayed moves to a direct address when a hole punch CONFIRMED it (an ack
  came back, so it works both ways): ``direct_found``.
- On the direct path, datagrams still being sent a while after the first unanswered one (at least
  DIRECT_TIMEOUT / 3 later: QUIC retransmits what needs an answer) with no direct datagram received
  within DIRECT_TIMEOUT mean the path stopped answering: back to the relay (if there is one). A burst that
  needs no answer (the last ACKs of a transfer, then silence) is not evidence: its window is dropped.
  A datagram arriving through the relay while the direct path has been unanswered for RELAY_HINT also
  moves us back (the peer already did). Only a new confirmed punch moves the connection direct again.
- Datagrams received from any other address than the confirmed direct one are not evidence of a
  working direct path (anyone can send us a packet).
"""

from __future__ import annotations

from typing import Literal

Address = tuple[str, int]
PathKind = Literal["direct", "relayed"]

DIRECT_TIMEOUT = 1.5
RELAY_HINT = 0.3


class PathSelector:
    def __init__(self, direct: Address | None = None, relay: Address | None = None) -> None:
        if direct is None and relay is None:
            raise ValueError("a path needs a direct address or a relay")
        self.direct = direct
        self.relay = relay
        self.kind: PathKind = "direct" if direct is not None else "relayed"
        self._unanswered_since: float | None = None  # first direct send since the last direct receive
        self._last_sent = 0.0
        self.bytes: dict[PathKind, dict[str, int]] = {
            "direct": {"sent": 0, "received": 0},
            "relayed": {"sent": 0, "received": 0},
        }
        self.moves: list[tuple[PathKind, str]] = []

    @property
    def destination(self) -> Address:
        """Where the next datagram goes (the relay's address when relayed)."""
        address = self.direct if self.kind == "direct" else self.relay
        assert address is not None
        return address

    def direct_found(self, address: Address, now: float) -> bool:
        """A punch confirmed ``address`` both ways: move there. True if the path changed."""
        changed = self.kind != "direct" or self.direct != address
        self.direct = address
        self.kind = "direct"
        self._unanswered_since = None
        if changed:
            self.moves.append(("direct", "hole punch confirmed"))
        return changed

    def datagram_sent(self, size: int, now: float) -> PathKind:
        """Account a datagram about to be sent; returns the path it takes (check ``destination``)."""
        self.check(now)
        self.bytes[self.kind]["sent"] += size
        if self.kind == "direct":
            if self._unanswered_since is None:
                self._unanswered_since = now
            self._last_sent = now
        return self.kind

    def datagram_received(self, via: PathKind, source: Address, size: int, now: float) -> None:
        """A datagram of this connection arrived directly from ``source`` or through the relay."""
        if via == "direct":
            if source != self.direct:
                return
            self.bytes["direct"]["received"] += size
            self._unanswered_since = None
            return
        self.bytes["relayed"]["received"] += size
        if (
            self.kind == "direct"
            and self.relay is not None
            and self._unanswered_since is not None
            and now - self._unanswered_since > RELAY_HINT
        ):
            self._fall_back("the peer moved to the relay")

    def check(self, now: float) -> None:
        if (
            self.kind == "direct"
            and self.relay is not None
            and self._unanswered_since is not None
            and now - self._unanswered_since > DIRECT_TIMEOUT
        ):
            if self._last_sent - self._unanswered_since >= DIRECT_TIMEOUT / 3:
                self._fall_back(f"no answer on the direct path for {DIRECT_TIMEOUT:g} s")
            else:  # datagrams that wanted no answer (final ACKs), then nothing: the path may be fine
                self._unanswered_since = None

    def get_timer(self) -> float | None:
        if self.kind == "direct" and self.relay is not None and self._unanswered_since is not None:
            return self._unanswered_since + DIRECT_TIMEOUT
        return None

    def handle_timer(self, now: float) -> None:
        self.check(now)

    def _fall_back(self, reason: str) -> None:
        self.kind = "relayed"
        self._unanswered_since = None
        self.moves.append(("relayed", reason))
