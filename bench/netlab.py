"""The NAT lab of tests/netns (network namespaces, needs root) for benchmarks: imports and small helpers.

``lab_modules()`` returns the ``lab`` and ``nodes`` modules of tests/netns (they are not a package);
``netns_skip_reason()`` says why the lab cannot be built here (None when it can); ``lan_pair(lab)`` makes
two public hosts on the lab's bridge (veths with MTU 1500: a LAN) and ``start_lan_node`` runs a daemon on
one, bootstrapping to another; ``lab_load`` times ``kachery-p2p load --json`` inside a host.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import REPO_ROOT, LoadRun, timed_load

NETNS_DIR = REPO_ROOT / "tests" / "netns"


def lab_modules() -> tuple[ModuleType, ModuleType]:
    if str(NETNS_DIR) not in sys.path:
        sys.path.insert(0, str(NETNS_DIR))
    import lab
    import nodes

    return lab, nodes


def netns_skip_reason() -> str | None:
    lab, _ = lab_modules()
    ok, reason = lab.netns_available()
    return None if ok else str(reason)


def link_mtu(host: Any, ifname: str = "eth0") -> int:
    out = host.run(["cat", f"/sys/class/net/{ifname}/mtu"], capture_output=True, text=True, timeout=10)
    return int(out.stdout.strip() or 0)


def start_lan_node(lab: Any, host: Any, root: Path, label: str, bootstrap: Any | None = None) -> Any:
    """A daemon on ``host`` at the lab's node port; with ``bootstrap`` (another host) it dials that one."""
    _, nodes = lab_modules()
    extra = ["--port", str(nodes.NODE_PORT)]
    if bootstrap is not None:
        extra += ["--bootstrap", f"{bootstrap.ip}:{nodes.NODE_PORT}"]
    return nodes.start_node(lab, host, root, label, *extra)


def wait_for_channel_peer(node: Any, node_id: str, timeout: float = 60.0, path: str | None = None) -> dict[str, Any]:
    """Wait until ``node`` lists ``node_id`` as a peer sharing a channel (on ``path`` if given)."""
    _, nodes = lab_modules()

    def ready() -> dict[str, Any] | None:
        peer = node.peer(node_id)
        if peer and peer.get("channels") and (path is None or peer.get("path") == path):
            return dict(peer)
        return None

    return dict(nodes.wait_until(f"peer {node_id[:8]} on {path or 'any path'}", ready, timeout))


def lab_load(node: Any, uri: str, timeout: float) -> LoadRun:
    """Time ``kachery-p2p-load --json URI`` (the command a user types, from this venv) run inside ``node``'s
    namespace with its environment."""
    argv = node.host.exec_argv([str(Path(sys.executable).parent / "kachery-p2p-load"), "--json", uri])
    return timed_load(argv, node.env, timeout, popen=node.host.popen)


def log_tail(node: Any, lines: int = 30) -> str:
    try:
        return "\n".join(node.log().splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
