"""The daemons of the soak benchmark (bench/soak.py): a relay and N nodes, in the NAT lab or on loopback.

In the lab (root and network namespaces) the relay sits on the public segment and the nodes each behind
their own NAT, port-restricted and symmetric in turn (n0, n2 port-restricted; n1, n3 symmetric): two
port-restricted nodes reach each other directly (hole punching), a symmetric one reaches the others
through the relay. On loopback every daemon listens on 127.0.0.1 and bootstraps to the relay.
Either way the caller gets ``SoakDaemon`` records: how to store a file, how to load a URI, the PID to sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemons import BenchDaemon, start_daemon
from bench.netlab import lab_modules

CHANNEL = "soak"
LAB_NATS = ("port-restricted", "symmetric")


@dataclass
class SoakDaemon:
    name: str  # "relay", "n0", ...
    nat: str  # "public", "port-restricted", "symmetric" or "loopback"
    root: Path
    env: dict[str, str]
    pid: int
    node_id: str
    store: Callable[[Path], str]  # a file -> its URI
    load_argv: Callable[[str], list[str]]  # a URI -> the command loading it (``load --json``)
    peers_json: Callable[[], str]  # the output of ``peers --json``
    popen: Callable[..., subprocess.Popen[Any]] | None = None  # how to start that command (None: Popen)

    def content_path(self, sha1: str) -> Path:
        return self.root / "store" / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1

    def channel_peers(self) -> dict[str, str]:
        """node id -> path ("direct", "relayed") of every peer sharing the soak channel."""
        peers = [json.loads(line) for line in self.peers_json().splitlines() if line.strip()]
        return {str(p["nodeId"]): str(p.get("path")) for p in peers if CHANNEL in (p.get("channels") or [])}


def _load_argv(uri: str) -> list[str]:
    return [sys.executable, "-m", "kachery_p2p", "load", "--json", uri]


def wait_connected(daemons: list[SoakDaemon], timeout: float) -> None:
    """Poll until every node (not the relay, daemons[0]) lists every other node as a channel peer."""
    deadline = time.monotonic() + timeout
    for node in daemons[1:]:
        others = {d.node_id for d in daemons[1:] if d is not node}
        while not others <= set(node.channel_peers()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not list its {len(others)} channel peers within {timeout:g} s")
            time.sleep(0.3)


def print_paths(daemons: list[SoakDaemon], when: str) -> None:
    """One line per node: the path it lists to each other node."""
    names = {d.node_id: d.name for d in daemons}
    for node in daemons[1:]:
        seen = ", ".join(f"{names.get(k, k[:8])} {v}" for k, v in sorted(node.channel_peers().items()))
        print(f"[soak] {when}: {node.name} ({node.nat}) lists {seen}", flush=True)


def _lab_record(name: str, nat: str, node: Any) -> SoakDaemon:
    return SoakDaemon(
        name,
        nat,
        node.root,
        node.env,
        node.proc.pid,
        str(node.info()["nodeId"]),
        store=lambda path: str(node.cli("store", str(path)).stdout.strip()),
        load_argv=lambda uri: list(node.host.exec_argv(_load_argv(uri))),
        peers_json=lambda: str(node.cli("peers", "--json").stdout),
        popen=node.host.popen,
    )


def start_lab(lab: Any, work: Path, count: int, timeout: float = 90.0) -> list[SoakDaemon]:
    """Relay on the lab's public segment, ``count`` nodes behind NATs, all in the channel and connected."""
    _, nodes = lab_modules()
    relay_host = lab.add_public_host("relay")
    daemons = [_lab_record("relay", "public", nodes.start_relay(lab, relay_host, work / "relay"))]
    for i in range(count):
        nat = LAB_NATS[i % len(LAB_NATS)]
        name = f"n{i}"
        node = nodes.start_peer(lab, lab.add_natted_host(name, nat), work / name, name, relay_host)
        node.cli("join-channel", CHANNEL)
        daemons.append(_lab_record(name, nat, node))
    wait_connected(daemons, timeout)
    return daemons


def _loopback_record(name: str, d: BenchDaemon) -> SoakDaemon:
    return SoakDaemon(
        name,
        "loopback",
        d.root,
        d.env,
        d.proc.pid,
        str(d.info["nodeId"]),
        store=lambda path: d.cli("kachery-p2p-store", str(path)).stdout.decode().strip(),
        load_argv=_load_argv,
        peers_json=lambda: d.cli("kachery-p2p-peers", "--json").stdout.decode(),
    )


def start_loopback(count: int, started: list[BenchDaemon], timeout: float = 60.0) -> list[SoakDaemon]:
    """Relay and ``count`` nodes on 127.0.0.1; every daemon started is appended to ``started`` (to stop)."""
    relay = start_daemon("soak-relay", ["--relay"])
    started.append(relay)
    daemons = [_loopback_record("relay", relay)]
    for i in range(count):
        node = start_daemon(f"soak-{i}", ["--bootstrap", f"127.0.0.1:{relay.udp_port}"])
        started.append(node)
        node.cli("kachery-p2p-join-channel", CHANNEL)
        daemons.append(_loopback_record(f"n{i}", node))
    wait_connected(daemons, timeout)
    return daemons
