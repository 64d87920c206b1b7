"""Helpers shared by the multi-daemon integration tests (polling with deadlines, peers, ports)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pytest

T = TypeVar("T")
L = TypeVar("L", bound="LoopThread")


class RunsCommands(Protocol):
    def run(self, command: str, *args: str, **kwargs: Any) -> Any: ...
    def api(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    output: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds
    (showing the end of ``output()`` if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f"; output: {output()[-1500:]!r}" if output is not None else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}{shown}")
        time.sleep(interval)


def udp_port(daemon: RunsCommands) -> int:
    """The daemon's QUIC port, from ``kachery-p2p-node-info --json``."""
    result = daemon.run("node-info", "--json")
    assert result.returncode == 0, result.stderr
    port = json.loads(result.stdout)["udpPort"]
    assert isinstance(port, int) and port > 0
    return port


def peer_entry(daemon: RunsCommands, node_id: str) -> dict[str, Any] | None:
    """The daemon's ``get_peers`` entry for ``node_id``, or None."""
    for peer in daemon.api("get_peers"):
        if peer.get("nodeId") == node_id:
            return dict(peer)
    return None


class LoopThread:
    """In-process peers on their own event loop in a thread, as a context manager: entering starts the
    thread and waits until ``open()`` has bound their endpoints; leaving stops the loop and joins.

    Subclasses implement ``open()`` (returning the endpoints to close at the end) and may keep tasks
    they start in ``self._tasks`` (cancelled at the end)."""

    timeout = 10.0

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        self._name = name
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    async def open(self) -> list[Any]:
        raise NotImplementedError

    def __enter__(self: L) -> L:
        self._thread.start()
        assert self._ready.wait(self.timeout), f"{self._name} did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout)
        assert not self._thread.is_alive(), f"{self._name} did not stop; still running: {self._pending()}"

    def _pending(self) -> str:
        """The tasks the thread's loop still runs, each with the line it waits at (for the failure message)."""
        if self._loop is None:
            return "no loop"
        lines = []
        for task in asyncio.all_tasks(self._loop):
            frames = task.get_stack(limit=1)
            where = f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "?"
            lines.append(f"{task.get_name()} {task.get_coro()!r} at {where}")
        return "; ".join(lines) or "no tasks"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        endpoints: list[Any] = []
        try:
            endpoints = await self.open()
            self._ready.set()
            await self._stop.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            for endpoint in endpoints:
                endpoint.close()
            await asyncio.sleep(0)
