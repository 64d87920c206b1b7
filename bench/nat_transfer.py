"""Across two port-restricted NATs (network namespaces, needs root): time from `kachery-p2p-load` to the
first byte and to completion for a 10 MiB file, on a direct (hole-punched) path and through the relay."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, bench_parser, pick_mib, report, skip

sys.path.insert(0, str(REPO_ROOT / "tests" / "netns"))

NAME = "nat-load"


def _one(path_kind: str, mib: int, workdir: Path) -> list[dict[str, Any]]:
    from lab import Lab, netns_available
    from nodes import sha1_of, start_peer, start_relay, wait_until, write_random_file

    ok, reason = netns_available()
    if not ok:
        print(f"[bench] {NAME}: skipped ({reason})")
        return []
    extra = () if path_kind == "direct" else ("--no-hole-punching",)
    with Lab() as lab:
        relay_host = lab.add_public_host("relay")
        host_a = lab.add_natted_host("a", "port-restricted")
        host_b = lab.add_natted_host("b", "port-restricted")
        start_relay(lab, relay_host, workdir / "relay")
        a = start_peer(lab, host_a, workdir / "a", "a", relay_host, *extra)
        b = start_peer(lab, host_b, workdir / "b", "b", relay_host, *extra)
        for node in (a, b):
            node.cli("join-channel", "bench")
        a_id = a.info()["nodeId"]
        wait_until("a peer on the expected path", lambda: (b.peer(a_id) or {}).get("path") == path_kind, 60)
        source = workdir / "payload.bin"
        digest = write_random_file(source, mib * 1024 * 1024)
        uri = a.cli("store", str(source)).stdout.strip()
        argv = b.host.exec_argv([sys.executable, "-m", "kachery_p2p", "load", "--json", uri])
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=b.env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first_line_at: float | None = None
        first_byte: float | None = None
        result_path = ""
        for line in proc.stdout:
            now = time.monotonic() - started
            message = json.loads(line)
            if first_line_at is None and "bytesTotal" in message:  # providers found: the download starts
                first_line_at = now
            if first_byte is None and "firstByteSec" in message:
                first_byte = (first_line_at or now) + float(message["firstByteSec"])
            if message.get("type") == "done":
                result_path = message["path"]
        done = time.monotonic() - started
        if proc.wait() != 0 or sha1_of(result_path) != digest:
            raise RuntimeError(f"load over the {path_kind} path failed")
        config = f"{mib} MiB, 2 port-restricted NATs, {path_kind}"
        return [
            report(f"{NAME}-ttfb-{path_kind}", (first_byte or done) * 1000, "ms", None, config=config),
            report(f"{NAME}-total-{path_kind}", done, "s", None, config=config,
                   mb_per_s=round(mib * 1.048576 / done, 2)),
        ]


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(10, 4))
    args = parser.parse_args(argv)
    mib = pick_mib(args, 10, 4)
    from lab import netns_available

    ok, reason = netns_available()
    if not ok:
        return [skip(NAME, reason)]
    results = []
    for kind in ("direct", "relayed"):
        with tempfile.TemporaryDirectory(prefix="kp2p-nat-bench-") as tmp:
            results.extend(_one(kind, mib, Path(tmp)))
    return results
