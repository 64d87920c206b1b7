"""What a peer session does with each request stream it receives, sans-IO.

Rules (the server side of ``quic.auth``):

- Nothing is served before authentication. The accepting side takes the first request as the
  client's signed ``auth`` message (``Authenticate``); a dialing side answers every request that comes
  before its own authentication finished with a coded "unauthenticated" error.
- After authentication, a ``channels`` update is answered at once (it only re-proves channels).
- At most ``max_incoming`` requests are served at once; one more is refused with "busy".

``decide(header, authenticated)`` returns the decision (``messages.parse_request`` errors propagate as
RemoteProtocolError); ``finished()`` releases the slot a ``Serve`` took. No IO, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import messages

MAX_INCOMING_REQUESTS = 64


@dataclass(frozen=True)
class Refuse:
    reply: dict[str, Any]


@dataclass(frozen=True)
class Authenticate:
    header: dict[str, Any]


@dataclass(frozen=True)
class UpdateChannels:
    request: messages.ChannelsUpdate


@dataclass(frozen=True)
class Serve:
    request: messages.Request


Decision = Refuse | Authenticate | UpdateChannels | Serve


class RequestGate:
    def __init__(self, is_client: bool, max_incoming: int = MAX_INCOMING_REQUESTS) -> None:
        self.is_client = is_client
        self.max_incoming = max_incoming
        self.incoming = 0
        self.refused_busy = 0

    def decide(self, header: dict[str, Any], authenticated: bool) -> Decision:
        if not authenticated:
            if self.is_client:
                return Refuse(messages.error("unauthenticated", "authenticate first"))
            return Authenticate(header)
        request = messages.parse_request(header)
        if isinstance(request, messages.ChannelsUpdate):
            return UpdateChannels(request)
        if self.incoming >= self.max_incoming:
            self.refused_busy += 1
            return Refuse(messages.error("busy", "too many requests at once"))
        self.incoming += 1
        return Serve(request)

    def finished(self) -> None:
        """A request a ``Serve`` decision admitted has been answered (or failed)."""
        self.incoming = max(0, self.incoming - 1)
