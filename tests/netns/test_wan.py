"""The WAN emulator (wan.py, nfq_delay.py): it gives the configured delay and loss, and two daemons complete a
load across a delayed, lossy path. No throughput assertions (those are benchmarks: python -m bench wan)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from lab import Lab
from nodes import NODE_PORT, sha1_of, start_node, wait_until, write_random_file
from wan import WanPath, wan_available


@pytest.fixture(autouse=True)
def _needs_wan_emulator() -> None:
    ok, reason = wan_available()
    if not ok:
        pytest.skip(reason)


def test_wan_path_gives_configured_delay_and_loss(lab: Lab) -> None:
    path = WanPath(lab, rtt_ms=40, loss=0.0)
    try:
        sent, rtts = path.udp_echo(count=40, interval=0.01)
        assert len(rtts) == sent == 40  # no loss configured: every probe comes back
        # never faster than the configured delay (the delayer may aim up to 1 ms early per direction to offset
        # its wake-up lateness), and typically within a few ms of it even on a busy 2-core machine
        assert min(rtts) >= 38.0, rtts
        assert statistics.median(rtts) <= 45.0, rtts

        path.set(rtt_ms=10, loss=0.2)
        sent, rtts = path.udp_echo(count=400, interval=0.002)
        # a probe survives two 20% coins: 64% expected; 400 probes give a standard deviation of 2.4 points
        survived = len(rtts) / sent
        assert 0.52 <= survived <= 0.76, survived
        assert min(rtts) >= 8.0 and statistics.median(rtts) <= 15.0, rtts

        path.set(rtt_ms=0, loss=0.0)
        assert path.delayer is None  # no delay: no NFQUEUE rule, no delayer process
        sent, rtts = path.udp_echo(count=20, interval=0.01)
        assert len(rtts) == 20 and statistics.median(rtts) < 5.0, rtts
    finally:
        path.close()
    assert path.delayer_stats.get("packets", 0) > 400  # the delayer saw the probes of the delayed runs


def test_daemon_load_over_delayed_lossy_path(lab: Lab, tmp_path: Path) -> None:
    path = WanPath(lab, rtt_ms=20, loss=0.005)
    try:
        a = start_node(lab, path.a, tmp_path / "a", "a", "--port", str(NODE_PORT))
        b = start_node(lab, path.b, tmp_path / "b", "b", "--port", str(NODE_PORT), "--bootstrap",
                       f"{path.a.ip}:{NODE_PORT}")
        for node in (a, b):
            node.cli("join-channel", "wan")
        a_id = a.info()["nodeId"]
        wait_until("b sees a in the channel", lambda: (b.peer(a_id) or {}).get("channels"), timeout=60)
        source = tmp_path / "payload.bin"
        sha1 = write_random_file(source, 3 << 20)
        uri = a.cli("store", str(source)).stdout.strip()
        loaded = b.cli("load", uri, timeout=180).stdout.strip().splitlines()[-1]
        assert sha1_of(loaded) == sha1
    finally:
        path.close()
    assert path.delayer_stats.get("packets", 0) > 2000  # the transfer really crossed the delay line
