"""kachery-p2p daemons running inside the NAT lab's namespaces, driven through their CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import Host, Lab

RELAY_PORT = 3478
NODE_PORT = 14507


@dataclass
class LabNode:
    host: Host
    root: Path
    env: dict[str, str]
    proc: subprocess.Popen[Any]

    def cli(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "kachery_p2p", *args]
        result = self.host.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed on {self.host.name}: {result.stderr}\n{self.log()[-3000:]}")
        return result

    def info(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("node-info", "--json").stdout))

    def peers(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cli("peers", "--json").stdout.splitlines() if line.strip()]

    def peer(self, node_id: str) -> dict[str, Any] | None:
        return next((p for p in self.peers() if p["nodeId"] == node_id), None)

    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_node(lab: Lab, host: Host, root: Path, label: str, *extra: str) -> LabNode:
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KACHERY_P2P_CONFIG_DIR": str(root / "config"),
        "KACHERY_STORAGE_DIR": str(root / "store"),
        "HOME": str(root),
    }
    env.pop("KACHERY_P2P_BOOTSTRAP", None)
    argv = [sys.executable, "-m", "kachery_p2p", "start-daemon", "--label", label, "--no-lan-discovery", "-v", *extra]
    log = open(root / "daemon.log", "ab")  # noqa: SIM115 - the daemon writes to it while it runs
    proc = host.popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    node = LabNode(host, root, env, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon {label} exited:\n{node.log()[-3000:]}")
        if node.cli("node-info", "--json", check=False).returncode == 0:
            return node
        time.sleep(0.1)
    raise AssertionError(f"daemon {label} did not answer within 30 s:\n{node.log()[-3000:]}")


def start_relay(lab: Lab, host: Host, root: Path) -> LabNode:
    return start_node(lab, host, root, "relay", "--relay", "--port", str(RELAY_PORT))


def start_peer(lab: Lab, host: Host, root: Path, label: str, relay: Host, *extra: str) -> LabNode:
    return start_node(
        lab, host, root, label, "--port", str(NODE_PORT), "--bootstrap", f"{relay.ip}:{RELAY_PORT}", *extra
    )


def wait_until(what: str, predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def write_random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha1(data).hexdigest()


def sha1_of(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
