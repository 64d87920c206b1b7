"""Run a daemon in the foreground until SIGINT, SIGTERM or ``kachery-p2p-stop-daemon``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from ..config import LOCK_FILENAME, DaemonConfig
from ..quic.identity import NodeIdentity
from ..store import ContentStore
from .lock import DaemonLock
from .network import PeerNetwork
from .node import Node

log = logging.getLogger("kachery_p2p.daemon")


def install_event_loop_policy() -> None:
    """uvloop where the platform has it."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def prepare(config: DaemonConfig) -> tuple[DaemonLock, NodeIdentity, ContentStore]:
    """Everything that can fail before the event loop starts, with user-facing errors."""
    config.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = DaemonLock(config.config_dir / LOCK_FILENAME)
    lock.acquire()
    try:
        identity = NodeIdentity.load_or_create(config.config_dir)
        store = ContentStore(config.storage_dir)
    except BaseException:
        lock.release()
        raise
    return lock, identity, store


async def serve(config: DaemonConfig, identity: NodeIdentity, store: ContentStore) -> None:
    # The composition: the node (store, channels, control endpoint) and its peer network, which
    # sees the node's channels through one callable and nothing else of it.
    node = Node(config, identity, store)
    node.remote = network = PeerNetwork(config, identity, store, node.channels.names)
    node.downloads = network.transfers.downloads  # so that a stopping node ends loads with a clear error
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, node.request_stop)
    try:
        await node.start()
        print(start_line(node), file=sys.stderr, flush=True)
        await node.wait_stopped()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await node.stop()


def run_daemon(config: DaemonConfig) -> None:
    lock, identity, store = prepare(config)
    try:
        install_event_loop_policy()
        asyncio.run(serve(config, identity, store))
    finally:
        lock.release()


def start_line(node: Node) -> str:
    """What the user needs to know once the daemon runs: who it is, where it listens, where it stores."""
    info = node.node_info()
    config = node.config
    dials = ", ".join(str(address) for address in config.bootstrap) or "none (LAN discovery only)"
    role = "relay, " if config.relay_mode else ""
    return (
        f"kachery-p2p daemon running: {role}node {node.identity.node_id}, control {config.api_host}:{config.api_port},"
        f" QUIC udp {info.get('udpAddress', '-')}, store {node.store.root}, bootstrap {dials}"
    )
