"""Two real daemons that reach each other only through a given relay (no hole punching, no LAN
discovery): B loads files A stored, timed by ``kachery-p2p-load --json`` (throughput and time to first
byte). Used by bench/relay_load.py to compare a relayed load with the relay idle and under load."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from bench.common import LoadRun, report, sha1_file, timed_load, write_payload
from bench.daemons import BenchDaemon, cleanup, start_daemon, wait_for_peer

BIN = Path(sys.executable).parent
MIB = 1 << 20


class RelayedPair:
    def __init__(self, relay: BenchDaemon, mib: int, files: int = 2) -> None:
        via = ["--no-hole-punching", "--bootstrap", f"{relay.info['nodeId']}@127.0.0.1:{relay.udp_port}"]
        self.daemons: list[BenchDaemon] = []
        self.a = self._start("relayed-a", via)
        self.b = self._start("relayed-b", via)
        channel = f"relayed-{uuid.uuid4().hex[:8]}"
        for node in (self.a, self.b):
            node.cli("kachery-p2p-join-channel", channel)
        wait_for_peer(self.b, self.a.info["nodeId"])
        self.mib = mib
        self.uris: list[str] = []
        self.sha1s: dict[str, str] = {}
        for i in range(files):
            source = self.a.root / f"payload-{i}.bin"
            sha1 = write_payload(source, mib)
            uri = self.a.cli("kachery-p2p-store", str(source)).stdout.decode().strip()
            source.unlink()
            self.uris.append(uri)
            self.sha1s[uri] = sha1

    def _start(self, label: str, extra: list[str]) -> BenchDaemon:
        daemon = start_daemon(label, extra)
        self.daemons.append(daemon)
        return daemon

    def load(self, uri: str, timeout: float = 300.0) -> LoadRun:
        """B loads ``uri``; ``problem(run)`` says what went wrong, if anything."""
        return timed_load([str(BIN / "kachery-p2p-load"), "--json", uri], self.b.env, timeout)

    def problem(self, run: LoadRun, uri: str) -> str | None:
        if not run.ok:
            return (f"load failed (rc={run.rc}, timed_out={run.timed_out}, {run.bytes_loaded} bytes): "
                    f"{run.error or run.stderr[-300:]}")
        if sha1_file(run.path or "") != self.sha1s[uri]:
            return "the relayed load has the wrong sha1"
        if run.paths != ["relayed"]:
            return f"the load was meant to go through the relay only, it went {run.paths}"
        return None

    def close(self) -> None:
        cleanup(*self.daemons)

    def compare(self, name: str, idle: LoadRun, loaded: LoadRun, nodes: int) -> list[dict[str, Any]]:
        """Report rows: throughput and time to first byte under load, each next to the idle relay's."""
        mib = self.mib

        def rate(run: LoadRun) -> float:
            return mib * MIB / 1e6 / (run.transfer_seconds() or run.elapsed)

        config = f"{mib} MiB, A -> B through the relay only, idle relay vs {nodes} nodes registered and looking up"
        idle_problem = self.problem(idle, self.uris[0])
        if idle_problem:
            raise RuntimeError(f"with the relay idle: {idle_problem}")
        loaded_problem = self.problem(loaded, self.uris[1])
        if loaded_problem:
            print(f"[{name}] relayed transfer under load: {loaded_problem}", flush=True)
            return [report(f"{name} relayed transfer under load", 0.0, "MB/s", rate(idle),
                           baseline_is="the same transfer, relay idle, same run", config=config,
                           failed=loaded_problem[:200], seconds=round(loaded.elapsed, 2))]
        return [
            report(f"{name} relayed transfer under load", rate(loaded), "MB/s", rate(idle),
                   baseline_is="the same transfer, relay idle, same run", config=config,
                   seconds=round(loaded.elapsed, 2), idle_seconds=round(idle.elapsed, 2)),
            report(f"{name} relayed TTFB under load", (loaded.first_byte or 0) * 1e3, "ms",
                   (idle.first_byte or 0) * 1e3, baseline_is="the same transfer, relay idle, same run", config=config),
        ]
