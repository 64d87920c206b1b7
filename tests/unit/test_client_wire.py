"""The control client's own HTTP/1.1 (client/wire.py) against a real aiohttp server, and against raw
sockets that break the protocol: every failure is one of our exceptions with one clear line."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from kachery_p2p.client.http import ControlClient
from kachery_p2p.client.wire import HTTPWireError, request
from kachery_p2p.config import ClientConfig
from kachery_p2p.errors import DaemonAuthError, DaemonError, DaemonNotRunningError, DaemonStoppedError, NotFoundError

TOKEN = "t0ken"


async def _json(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method, "host": request.headers.get("Host"), "auth": request.headers.get("Authorization"),
        "body": body.decode(), "length": request.headers.get("Content-Length"),
    })


async def _lines(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)  # no length: aiohttp sends it chunked
    for i in range(3):
        await response.write(json.dumps({"type": "progress", "i": i}).encode() + b"\n")
        await asyncio.sleep(0.01)
    await response.write(b'{"type": "done", ')  # one line split over two chunks
    await response.write(b'"path": "/x"}\n')
    return response


async def _error_line(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"type": "error", "code": "not_found", "message": "no peer has it"}\n')
    return response


async def _frames(request: web.Request) -> web.StreamResponse:
    data = bytes(range(256)) * 1000
    response = web.StreamResponse()
    await response.prepare(request)
    size = b'{"size": %d}' % len(data)
    await response.write(b"S" + len(size).to_bytes(4, "big") + size)
    for start in range(0, len(data), 70000):  # frames larger than one recv
        block = data[start : start + 70000]
        await response.write(b"D" + len(block).to_bytes(4, "big") + block)
    await response.write(b"Z" + bytes(4))
    return response


async def _cut_short(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "1000"})
    await response.prepare(request)
    await response.write(b"x" * 10)
    assert request.transport is not None
    request.transport.close()
    return response


async def _not_found(request: web.Request) -> web.Response:
    return web.json_response({"error": {"code": "not_found", "message": "no such thing"}}, status=404)


async def _unauthorized(request: web.Request) -> web.Response:
    return web.json_response({"error": {"code": "unauthorized", "message": "bad token"}}, status=401)


async def _stall(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"type": "progress"}\n')
    await asyncio.sleep(5)
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


def _serve(start: Callable[[asyncio.AbstractEventLoop], int]) -> Iterator[int]:
    """Run a server on a loop in a thread; yield its port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        port.append(start(loop))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    app = web.Application()
    app.router.add_route("*", "/json", _json)
    app.router.add_post("/lines", _lines)
    app.router.add_post("/error-line", _error_line)
    app.router.add_post("/frames", _frames)
    app.router.add_get("/cut", _cut_short)
    app.router.add_get("/missing", _not_found)
    app.router.add_get("/unauthorized", _unauthorized)
    app.router.add_get("/slow", _slow)
    app.router.add_post("/stall", _stall)
    runner = web.AppRunner(app)

    def start(loop: asyncio.AbstractEventLoop) -> int:
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        return int(server.sockets[0].getsockname()[1])

    yield from _serve(start)


def _client(tmp_path: Path, port: int, timeout: float = 30.0) -> ControlClient:
    (tmp_path / "api-token").write_text(TOKEN)
    return ControlClient(ClientConfig(config_dir=tmp_path, api_port=port), timeout=timeout)


def test_content_length_reply_and_request_headers(tmp_path: Path, app_port: int) -> None:
    reply = _client(tmp_path, app_port).post_json("/json", {"a": 1})
    assert reply == {"method": "POST", "host": f"127.0.0.1:{app_port}", "auth": f"Bearer {TOKEN}",
                     "body": '{"a": 1}', "length": "8"}


def test_a_file_body_is_sent_with_its_length(tmp_path: Path, app_port: int) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"y" * 200_000)
    with open(data, "rb") as handle:
        reply = _client(tmp_path, app_port).post_stream("/json", handle, 200_000, "data")
    assert reply["length"] == "200000" and reply["body"] == "y" * 200_000


def test_chunked_json_lines_arrive_one_by_one(tmp_path: Path, app_port: int) -> None:
    messages = list(_client(tmp_path, app_port).post_json_lines("/lines", {}))
    assert [m.get("i") for m in messages] == [0, 1, 2, None]
    assert messages[-1] == {"type": "done", "path": "/x"}


def test_an_error_line_raises_its_exception(tmp_path: Path, app_port: int) -> None:
    with pytest.raises(NotFoundError, match="no peer has it"):
        list(_client(tmp_path, app_port).post_json_lines("/error-line", {}))


def test_framed_bytes_larger_than_one_read(tmp_path: Path, app_port: int) -> None:
    data = b"".join(_client(tmp_path, app_port).read_frames("/frames", {}))
    assert data == bytes(range(256)) * 1000


def test_error_replies_become_our_exceptions(tmp_path: Path, app_port: int) -> None:
    client = _client(tmp_path, app_port)
    with pytest.raises(NotFoundError, match="no such thing"):
        client.get_json("/missing")
    with pytest.raises(DaemonAuthError, match="refused our token"):
        client.get_json("/unauthorized")


def test_a_body_cut_short_is_a_lost_connection(tmp_path: Path, app_port: int) -> None:
    with pytest.raises(DaemonError, match="lost the connection to the daemon: the connection closed with 990 bytes"):
        _client(tmp_path, app_port).get_json("/cut")


def test_the_timeout_is_honoured(tmp_path: Path, app_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DaemonError, match="lost the connection to the daemon: timed out"):
        _client(tmp_path, app_port, timeout=0.3).get_json("/slow")
    assert time.monotonic() - started < 3


def test_silence_during_a_stream_is_reported(tmp_path: Path, app_port: int) -> None:
    seen = []
    with pytest.raises(DaemonError, match=r"sent nothing for 0\.3 s"):
        for message in _client(tmp_path, app_port).post_json_lines("/stall", {}, timeout=0.3):
            seen.append(message)
    assert seen == [{"type": "progress"}]


def test_nothing_listening_is_daemon_not_running(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DaemonNotRunningError, match=f"nothing answers on 127.0.0.1:{port}"):
            _client(tmp_path, port).get_json("/json")


def _raw_server(reply: bytes) -> Iterator[int]:
    """A server that reads the request head, sends ``reply`` and closes."""

    def start(loop: asyncio.AbstractEventLoop) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            writer.close()

        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        return int(server.sockets[0].getsockname()[1])

    yield from _serve(start)


@pytest.mark.parametrize("reply, message", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "bad status line"),
    (b"", "closed in the middle of the reply's head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "the connection closed with 3 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
])
def test_a_broken_reply_is_one_clear_error(tmp_path: Path, reply: bytes, message: str) -> None:
    for port in _raw_server(reply):
        with pytest.raises(DaemonError, match=f"lost the connection to the daemon: .*{message}"):
            _client(tmp_path, port).get_json("/x")


def test_a_stream_cut_mid_chunk_is_daemon_stopped(tmp_path: Path) -> None:
    for port in _raw_server(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"type": "pro'):
        with pytest.raises(DaemonStoppedError, match="the daemon stopped during the request"):
            list(_client(tmp_path, port).post_json_lines("/x", {}))


def test_a_reply_without_length_ends_at_close() -> None:
    for port in _raw_server(b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nline one\nline two"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            response = request(sock, "GET", f"127.0.0.1:{port}", "/", {})
            assert (response.status, response.headers) == (200, {"x-a": "1"})
            assert list(response) == [b"line one\n", b"line two"]


def test_a_file_body_needs_a_length() -> None:
    with socket.socket() as sock, pytest.raises(ValueError), open(__file__, "rb") as handle:
        request(sock, "POST", "h:1", "/", {}, handle)


def test_chunk_extensions_and_trailers() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    for port in _raw_server(reply):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            response = request(sock, "GET", f"127.0.0.1:{port}", "/", {})
            assert response.read(1) == b"a" and response.read() == b"bcde" and response.read() == b""


def test_wire_error_is_not_an_oserror() -> None:
    assert not issubclass(HTTPWireError, OSError)
