"""Control endpoint hardening (issue 10 #7, #10 and the Host check), on a real aiohttp server on
127.0.0.1 with a stand-in node service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from kachery_p2p.daemon.control import make_app
from kachery_p2p.daemon.control_guard import GUARD_KEY, GuardedSite, host_allowed, number_in_range
from kachery_p2p.errors import UsageError
from kachery_p2p.ids import FileUri

TOKEN = "secret-token"
URI = "sha1://" + "a" * 40


class FakeService:
    def __init__(self) -> None:
        self.find_timeouts: list[float] = []

    def probe_info(self) -> dict[str, Any]:
        return {"service": "kachery-p2p", "nodeId": "n" * 64}

    async def _find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        self.find_timeouts.append(timeout)
        if False:  # pragma: no cover - an empty async generator
            yield {}

    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._find(uri, timeout)


async def _serve(service: FakeService, **guard_settings: float) -> tuple[web.AppRunner, int]:
    app = make_app(service, TOKEN)  # type: ignore[arg-type]
    for key, value in guard_settings.items():
        setattr(app[GUARD_KEY], key, value)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    port = server.sockets[0].getsockname()[1]
    return runner, port


async def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def _get(path: str, host: str | None, extra: str = "") -> bytes:
    head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    return (head + extra + "Connection: close\r\n\r\n").encode()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_host_allowed_accepts_only_loopback_names_with_our_port() -> None:
    for good in ("127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080"):
        assert host_allowed(good, 8080)
    for bad in (None, "", "127.0.0.1", "127.0.0.1:8081", "evil.example:8080", "127.0.0.1.evil:8080", "0.0.0.0:8080"):
        assert not host_allowed(bad, 8080), bad


def test_every_route_refuses_a_foreign_host_header_dns_rebinding() -> None:
    async def scenario() -> None:
        runner, port = await _serve(FakeService())
        try:
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
                assert _status(await _raw(port, _get("/probe", host))) == 200, host
            for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1:{port + 1}", None):
                reply = await _raw(port, _get("/probe", host))
                assert _status(reply) in ((400, 403) if host is None else (403,)), host
                assert b"nodeId" not in reply and b"n" * 64 not in reply
                auth = f"Authorization: Bearer {TOKEN}\r\n"
                assert _status(await _raw(port, _get("/node-info", host, auth))) in (400, 403), host
        finally:
            await runner.cleanup()

    run(scenario)


def test_unfinished_request_heads_time_out() -> None:
    async def scenario() -> None:
        runner, port = await _serve(FakeService(), header_timeout=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /probe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
            # The server hangs up (EOF) instead of waiting forever for the rest of the head.
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert runner.app[GUARD_KEY].timed_out == 1
            assert runner.app[GUARD_KEY].open_connections == 0
        finally:
            await runner.cleanup()

    run(scenario)


def test_connections_beyond_the_cap_get_503_and_the_endpoint_recovers() -> None:
    async def scenario() -> None:
        runner, port = await _serve(FakeService(), max_connections=5)
        guard = runner.app[GUARD_KEY]
        try:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            deadline = asyncio.get_running_loop().time() + 5
            while guard.open_connections < 5 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            reply = await _raw(port, _get("/probe", f"127.0.0.1:{port}"))
            assert _status(reply) == 503 and b"too many connections" in reply
            for _reader, writer in idle:
                writer.close()
            while guard.open_connections and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert _status(await _raw(port, _get("/probe", f"127.0.0.1:{port}"))) == 200
        finally:
            await runner.cleanup()

    run(scenario)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "-1", "1e300", "true", '"5"'])
def test_find_with_a_bad_timeout_is_one_clear_400(value: str) -> None:
    service = FakeService()

    async def scenario() -> None:
        runner, port = await _serve(service)
        try:
            body = f'{{"uri": "{URI}", "timeoutSec": {value}}}'.encode()
            head = (
                f"POST /find HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            reply = await _raw(port, head.encode() + body)
            assert _status(reply) == 400, reply
            error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["code"] == "bad_request"
            assert "timeoutSec" in error["message"] or "JSON" in error["message"]
        finally:
            await runner.cleanup()

    run(scenario)
    assert service.find_timeouts == []  # the node never saw the bad number


def test_number_in_range() -> None:
    assert number_in_range(3, "x", 0, 10) == 3.0
    for bad in (float("nan"), float("inf"), -1, 11, True, "3", None):
        with pytest.raises(UsageError):
            number_in_range(bad, "x", 0, 10)
