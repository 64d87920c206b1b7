"""Builds the peer network for a node (QUIC endpoint, discovery, transfers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node import Node, RemoteFiles


def build_network(node: Node) -> RemoteFiles | None:
    """None until the peer network exists; the node then serves its local store only."""
    return None
