"""The peer table: the authenticated sessions of a node, by peer node id.

The one place that knows which sessions exist; components get this table (or one of its methods)
instead of the whole peer network. Which session serves a peer is ``peering.policy.session_rank``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from ..peering.policy import session_rank
from .session import PeerSession

SessionListener = Callable[[str, PeerSession | None], None]


class PeerTable:
    def __init__(self, my_node_id: str) -> None:
        self.my_node_id = my_node_id
        self._sessions: dict[str, list[PeerSession]] = {}
        # Set whenever a session is added (searches wait on it for late-connecting peers).
        self.peer_added = asyncio.Event()
        # Node ids with a connection attempt under way (kept by the connector).
        self.connecting: set[str] = set()
        self.listeners: list[SessionListener] = []

    def add(self, session: PeerSession) -> None:
        assert session.node_id is not None
        self._sessions.setdefault(session.node_id, []).append(session)
        self.peer_added.set()
        self._changed(session.node_id)

    def remove(self, session: PeerSession) -> None:
        node_id = session.node_id
        if node_id is None:
            return
        sessions = self._sessions.get(node_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(node_id, None)
        self._changed(node_id)

    def _changed(self, node_id: str) -> None:
        best = self.session_for(node_id)
        for listener in self.listeners:
            listener(node_id, best)

    def session_for(self, node_id: str) -> PeerSession | None:
        live = [s for s in self._sessions.get(node_id, []) if not s.link.is_closed]
        if not live:
            return None
        live.sort(key=lambda s: session_rank(s.link.path.kind, s.link.is_client, self.my_node_id, node_id))
        return live[0]

    def channel_peers(self) -> list[PeerSession]:
        """The best session of each peer that shares a channel with us."""
        found = []
        for node_id in list(self._sessions):
            session = self.session_for(node_id)
            if session is not None and session.shared_channels:
                found.append(session)
        return found

    def all_sessions(self) -> Iterator[PeerSession]:
        for sessions in list(self._sessions.values()):
            yield from list(sessions)

    def node_ids(self) -> list[str]:
        return sorted(self._sessions)

    def info(self) -> list[dict[str, Any]]:
        result = []
        for node_id in self.node_ids():
            session = self.session_for(node_id)
            if session is not None:
                result.append(session.info())
        return result
