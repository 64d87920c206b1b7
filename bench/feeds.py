"""Feeds between two daemons on loopback: append-on-A to visible-on-B latency (p50, p90) and sustained
messages per second.

Latency: B's reader waits in a long-poll (``/feed/watch`` with waitMsec 10000, what
``Subfeed.get_next_messages(wait_msec=...)`` sends); A appends one ~100-byte message through its control
endpoint; the figure is the time from the start of A's append call to B's reader returning with it. The
baseline is the same with the reader on A itself (no network: control endpoint, signing, SQLite, wake-up).
Throughput: A appends M messages in batches of 100; the figure is M / (time until B has all M); the
baseline is A's own append rate in the same run.

    .venv/bin/python -m bench feeds [--quick] [--count 50] [--messages 20000]
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench.common import bench_parser, median, percentile, report
from bench.daemon_transfer import connected_pair
from bench.daemons import BenchDaemon, cleanup
from kachery_p2p.client.http import ControlClient
from kachery_p2p.config import ClientConfig

NAME = "feeds"
SUBFEED = "3a1b5a2c0b07a6cdd6e4f0b9c1bd3c5e5b46b5b8"  # any 40-hex subfeed hash


def _client(daemon: BenchDaemon) -> ControlClient:
    env = daemon.env
    return ControlClient(ClientConfig(Path(env["KACHERY_P2P_CONFIG_DIR"]), int(env["KACHERY_P2P_API_PORT"])))


def _watch(client: ControlClient, feed_id: str, position: int, wait_msec: int = 10_000) -> list[Any]:
    payload = {"watches": {"w": {"feedId": feed_id, "subfeedHash": SUBFEED, "position": position}},
               "waitMsec": wait_msec, "maxNumMessages": 0}
    return list(client.post_json("/feed/watch", payload, timeout=wait_msec / 1000 + 30)["messages"]["w"])


def _append(client: ControlClient, feed_id: str, messages: list[dict[str, Any]]) -> int:
    reply = client.post_json("/feed/append", {"feedId": feed_id, "subfeedHash": SUBFEED, "messages": messages})
    return int(reply["numMessages"])


def _latencies(writer: ControlClient, reader: ControlClient, feed_id: str, start: int, count: int) -> list[float]:
    times = []
    for i in range(count):
        position = start + i
        result: dict[str, Any] = {}

        def wait(position: int = position, result: dict[str, Any] = result) -> None:
            result["messages"] = _watch(reader, feed_id, position)
            result["at"] = time.perf_counter()

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.05)  # the reader is waiting in its daemon before we append
        appended = time.perf_counter()
        _append(writer, feed_id, [{"i": position, "text": "x" * 80}])
        thread.join(30)
        if len(result.get("messages", [])) != 1 or result["messages"][0]["i"] != position:
            raise RuntimeError(f"reader got {result.get('messages')!r} for message {position}")
        times.append(result["at"] - appended)
    return times


def _throughput(
    writer: ControlClient, reader: ControlClient, feed_id: str, start: int, total: int
) -> tuple[float, float]:
    """(messages/s visible on B, messages/s appended on A)."""
    seen = {"count": 0, "at": 0.0}

    def follow() -> None:
        position = start
        while position < start + total:
            position += len(_watch(reader, feed_id, position, 5000))
        seen["count"], seen["at"] = position - start, time.perf_counter()

    thread = threading.Thread(target=follow)
    thread.start()
    began = time.perf_counter()
    for first in range(0, total, 100):
        _append(writer, feed_id, [{"i": start + first + k, "text": "x" * 80} for k in range(min(100, total - first))])
    appended = time.perf_counter()
    thread.join(300)
    if seen["count"] != total:
        raise RuntimeError(f"B saw {seen['count']} of {total} messages")
    return total / (seen["at"] - began), total / (appended - began)


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="latency samples (default 50, --quick 20)")
    parser.add_argument(
        "--messages", type=int, default=None, help="messages for the rate (default 20000, --quick 3000)"
    )
    args = parser.parse_args(argv)
    count = args.count or (20 if args.quick else 50)
    total = args.messages or (3000 if args.quick else 20000)
    a, b = connected_pair("feeds")
    results: list[dict[str, Any]] = []
    try:
        on_a, on_b = _client(a), _client(b)
        feed_id = str(on_a.post_json("/feed/create", {})["feedId"])
        on_b.post_json("/feed/load", {"feedId": feed_id})
        _append(on_a, feed_id, [{"i": 0}])
        if len(_watch(on_b, feed_id, 0)) != 1:  # B follows the subfeed from here on
            raise RuntimeError("B did not get the first message")
        remote = _latencies(on_a, on_b, feed_id, 1, count)
        local = _latencies(on_a, on_a, feed_id, 1 + count, max(5, count // 2))
        config = f"loopback, connected peers, ~100-byte messages, n={count}"
        for stat, pick in (("p50", median), ("p90", lambda v: percentile(v, 90))):
            results.append(report(
                f"{NAME} append-on-A to visible-on-B {stat}", pick(remote) * 1000, "ms", pick(local) * 1000,
                target="value<=50", baseline_is=f"{stat} with the reader on A itself (n={len(local)})",
                config=config, min_ms=round(min(remote) * 1000, 2), max_ms=round(max(remote) * 1000, 2),
            ))
        start = 1 + count + max(5, count // 2)
        visible, appended = _throughput(on_a, on_b, feed_id, start, total)
        results.append(report(
            f"{NAME} sustained messages/s visible on B", visible, "msg/s", appended,
            baseline_is="A's own append rate in the same run (batches of 100)",
            config=f"{total} messages of ~100 bytes, appended in batches of 100",
        ))
    finally:
        cleanup(a, b)
    return results
