"""Start real kachery-p2p daemons for benchmarks (own temp dirs, loopback only, no LAN multicast)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import free_port


@dataclass
class BenchDaemon:
    root: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    udp_port: int
    info: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[bytes]:
        command = [str(Path(sys.executable).parent / args[0]), *args[1:]]
        return subprocess.run(command, env=self.env, capture_output=True, timeout=timeout, check=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_daemon(
    label: str, extra: list[str] | None = None, root: Path | None = None, env_extra: dict[str, str] | None = None
) -> BenchDaemon:
    """Start a daemon and wait for its node info; ``env_extra`` is added to its environment (and to that
    of the CLI commands run for it), e.g. PYTHONPATH to run another version of the package."""
    root = root or Path(tempfile.mkdtemp(prefix=f"kp2p-bench-{label}-"))
    udp_port = free_port()
    env = {
        **os.environ,
        "KACHERY_P2P_CONFIG_DIR": str(root / "config"),
        "KACHERY_STORAGE_DIR": str(root / "store"),
        "KACHERY_P2P_API_PORT": str(free_port(kind=1)),
        "HOME": str(root),
        **(env_extra or {}),
    }
    argv = [sys.executable, "-m", "kachery_p2p", "start-daemon", "--label", label, "--port", str(udp_port),
            "--no-lan-discovery", *(extra or [])]
    log = open(root / "daemon.log", "wb")  # noqa: SIM115 - kept open for the daemon's lifetime
    # ``python -m`` puts the working directory first on sys.path: run elsewhere when PYTHONPATH is given
    cwd = str(root) if env_extra and "PYTHONPATH" in env_extra else None
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    daemon = BenchDaemon(root, env, proc, udp_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon {label} exited: {(root / 'daemon.log').read_text()}")
        result = subprocess.run(
            [str(Path(sys.executable).parent / "kachery-p2p-node-info"), "--json"], env=env, capture_output=True
        )
        if result.returncode == 0:
            daemon.info = json.loads(result.stdout)
            return daemon
        time.sleep(0.05)
    daemon.stop()
    raise RuntimeError(f"daemon {label} did not start")


def wait_for_peer(daemon: BenchDaemon, node_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = daemon.cli("kachery-p2p-peers", "--json").stdout.decode()
        for line in out.splitlines():
            peer = json.loads(line)
            if peer["nodeId"] == node_id and peer["channels"]:
                return
        time.sleep(0.05)
    raise RuntimeError("peers did not connect")


def cleanup(*daemons: BenchDaemon) -> None:
    for daemon in daemons:
        daemon.stop()
        shutil.rmtree(daemon.root, ignore_errors=True)
