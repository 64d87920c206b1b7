"""Loads that survive everyday use (issue 9): slow providers, several clients of one download, Ctrl-C in
a terminal, the daemon stopping mid-load, a daemon on another control port.

Slow links are played by scripted peers in this process (test_downloads.ScriptedPeers: real QUIC, the
product's session code) that send at a chosen pace or hold a chunk back until the test releases it, so
what is checked does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import itertools
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_downloads as dl
from conftest import free_tcp_port
from helpers import wait_until

from kachery_p2p.quic import messages
from kachery_p2p.store.manifest import ManifestBuilder

MB = 1_000_000
CHUNK = 20_000_000
BIN_DIR = os.path.dirname(sys.executable)


# ---- a scripted provider of one file ---------------------------------------------------------------------


class Provider:
    """Serves ``data`` (with its manifest when larger than a chunk). ``block_delay`` paces every 64 KiB
    block; ranges from ``hold_from`` on wait until ``release()``. Counts the bytes asked for."""

    def __init__(self, data: bytes, block_delay: float = 0.0, hold_from: int | None = None) -> None:
        builder = ManifestBuilder()
        builder.update(data)
        self.sha1, manifest = builder.finish()
        self.manifest = manifest.to_json_bytes() if manifest is not None else None
        self.manifest_sha1 = manifest.sha1_of_json() if manifest is not None else None
        self.data = data
        self.block_delay = block_delay
        self.hold_from = hold_from
        self.asked: list[tuple[int, int]] = []
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def uri(self, name: str) -> str:
        """The URI kachery-p2p-store gives: with ?manifest= for a file of more than one chunk."""
        return f"sha1://{self.sha1}/{name}" + (f"?manifest={self.manifest_sha1}" if self.manifest_sha1 else "")

    def release(self) -> None:
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    async def handle(self, request: messages.Request) -> dl.Reply:
        if self._release is None:
            self._loop, self._release = asyncio.get_running_loop(), asyncio.Event()
        if isinstance(request, messages.Has):
            if request.sha1 == self.manifest_sha1 and self.manifest is not None:
                return {"ok": True, "size": len(self.manifest)}, None
            return {"ok": True, "size": len(self.data)}, None
        if isinstance(request, messages.GetManifest):
            assert self.manifest is not None
            return {"ok": True, "length": len(self.manifest)}, _once(self.manifest)
        assert isinstance(request, messages.GetRange)
        if request.sha1 == self.manifest_sha1 and self.manifest is not None:  # the URI's manifest, by its hash
            part = self.manifest[request.start : request.end]
            return {"ok": True, "length": len(part)}, _once(part)
        self.asked.append((request.start, request.end))
        if self.hold_from is not None and request.end > self.hold_from:
            await self._release.wait()
        piece = self.data[request.start : request.end]
        return {"ok": True, "length": len(piece)}, dl.paced(piece, self.block_delay)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def receiver_of(provider: Provider, factory: Any, peers: dl.ScriptedPeers) -> Any:
    receiver = factory.start("delta", peers.bootstrap_args())
    dl.join(peers.channel, receiver)
    dl.wait_for_channel_peers(receiver, [peers.node_id("p")], peers.channel)
    return receiver


def scripted(provider: Provider) -> dl.ScriptedPeers:
    return dl.ScriptedPeers(f"ld-{uuid.uuid4().hex[:12]}", {"p": provider.handle})


def script(name: str) -> str:
    path = shutil.which(f"kachery-p2p-{name}", path=BIN_DIR)
    assert path is not None
    return path


class Terminal:
    """A command in a pseudo-terminal, as a user runs it; ``ctrl_c`` types Ctrl-C on its keyboard."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once (no Python-level cleanup in a forked test process)
            try:
                os.chdir(cwd)
                os.execve(argv[0], argv, {**env, "TERM": "xterm", "COLUMNS": "100"})
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        # A terminal window of 24 x 100 (a new pseudo-terminal has 0 x 0, where progress bars draw nothing).
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.output = bytearray()
        self.status: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the command did not end within {timeout:g} s; it wrote {self.text()[-500:]!r}")
            time.sleep(0.05)
        self._reader.join(5.0)
        return self.status

    def kill(self) -> None:
        if self.status is None:
            with _suppress():
                os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        self.kill()
        with _suppress():
            os.close(self.fd)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


@pytest.fixture
def terminals() -> Any:
    started: list[Terminal] = []

    def start(argv: list[str], daemon: Any) -> Terminal:
        terminal = Terminal(argv, daemon.env, daemon.root)
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def progress_gaps(load: dl.Load) -> list[float]:
    times = [m["_at"] for m in load.seen if m.get("type") == "progress"]
    return [b - a for a, b in itertools.pairwise(times)]


def no_tracebacks(daemon: Any) -> None:
    log = daemon.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# ---- item 1: slow is not dead --------------------------------------------------------------------------


def test_a_load_and_a_cat_from_a_slow_provider_outlive_half_a_minute_of_transfer(daemon_factory: Any) -> None:
    """1 MB in 64 KiB blocks 2.3 s apart (about 37 s, 0.2 Mbit/s). Before: both commands died at 30 s with
    'lost the connection to the daemon: timed out'. Now both finish, and the load shows bytes as they
    arrive, at least every few seconds."""
    loaded, catted = Provider(os.urandom(MB), block_delay=2.3), Provider(os.urandom(MB), block_delay=2.3)

    async def both(request: messages.Request) -> dl.Reply:  # two files, so that neither waits for the other
        return await (loaded if getattr(request, "sha1", None) == loaded.sha1 else catted).handle(request)

    with dl.ScriptedPeers(f"ld-{uuid.uuid4().hex[:12]}", {"p": both}) as peers:
        receiver = receiver_of(loaded, daemon_factory, peers)
        load = dl.Load(receiver, loaded.uri("slow.bin"))
        try:
            cat = subprocess.run([script("cat"), catted.uri("slow-too.bin")], env=receiver.env, capture_output=True,
                                 timeout=120)
            code = load.finish()
        finally:
            load.close()
    assert code == 0, load.stderr
    assert cat.returncode == 0, cat.stderr.decode()
    assert hashlib.sha1(cat.stdout).hexdigest() == catted.sha1
    assert load.path is not None and dl.sha1_file(load.path) == loaded.sha1
    gaps = progress_gaps(load)
    assert gaps and max(gaps) < 5.0, gaps
    partial = [m["bytesLoaded"] for m in load.seen if m.get("type") == "progress" and 0 < m.get("bytesLoaded", 0) < MB]
    assert len(set(partial)) >= 5, partial  # bytes as they arrive, not only when the piece is whole
    no_tracebacks(receiver)


def test_cat_streams_the_first_chunk_before_the_last_one_arrives(daemon_factory: Any) -> None:
    """A 21 MB file (two chunks); the provider holds the second chunk back until cat has written the first
    one. Before: cat wrote nothing until the whole range was fetched (here: never)."""
    data = os.urandom(CHUNK + MB)
    provider = Provider(data, hold_from=CHUNK)
    with scripted(provider) as peers:
        receiver = receiver_of(provider, daemon_factory, peers)
        uri = provider.uri("two-chunks.bin")
        proc = subprocess.Popen([script("cat"), uri], env=receiver.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            received = bytearray()
            got_first = threading.Event()

            def read() -> None:
                assert proc.stdout is not None
                while block := proc.stdout.read1(1 << 20):
                    received.extend(block)
                    if len(received) >= CHUNK:
                        got_first.set()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            assert got_first.wait(60.0), f"cat wrote {len(received)} bytes while the second chunk was held back"
            assert bytes(received[:CHUNK]) == data[:CHUNK]
            provider.release()
            assert proc.wait(60.0) == 0, proc.stderr.read().decode() if proc.stderr else ""
            reader.join(10.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5.0)
    assert hashlib.sha1(received).hexdigest() == provider.sha1


# ---- item 2: Ctrl-C of one client ----------------------------------------------------------------------


def test_ctrl_c_in_one_terminal_leaves_the_other_load_running(daemon_factory: Any, terminals: Any) -> None:
    """Two loads of one file; the first runs in a terminal and the user presses Ctrl-C there. Before: the
    second failed at once ('internal error: Cannot write to closing transport'), only the first got
    progress, and the daemon logged tracebacks. Now the second gets progress all along and finishes."""
    data = os.urandom(CHUNK + MB)
    provider = Provider(data, hold_from=CHUNK)
    with scripted(provider) as peers:
        receiver = receiver_of(provider, daemon_factory, peers)
        uri = provider.uri("shared.bin")
        first = terminals([script("load"), uri], receiver)
        wait_until(lambda: "%" in first.text(), 60.0, "a progress bar in the first terminal", output=first.text)
        second = dl.Load(receiver, uri)
        try:
            second.wait_for(lambda m: m.get("bytesLoaded", 0) >= CHUNK, 60.0, "the second client's progress")
            assert dl.downloaded(receiver) >= CHUNK  # node-info counts bytes as they arrive (before: 0 until done)
            first.ctrl_c()
            assert first.wait(20.0) == 130, first.text()
            assert "Traceback" not in first.text() and "Error" not in first.text(), first.text()
            left_at = time.monotonic()
            second.wait_for(lambda m: m["_at"] > left_at + 2.5, 20.0, "progress after the first client left")
            assert second.proc.poll() is None, "the second load ended when the first client left"
            provider.release()
            assert second.finish() == 0, second.stderr
        finally:
            second.close()
    assert second.path is not None and dl.sha1_file(second.path) == provider.sha1
    no_tracebacks(receiver)
    log = receiver.log_text()  # -v: joins and loads are logged at INFO (before: nothing)
    assert "joined channel" in log and f"loaded sha1://{provider.sha1}" in log, log[-2000:]


def test_ctrl_c_of_the_only_client_stops_the_download_and_keeps_verified_chunks(
    daemon_factory: Any, terminals: Any
) -> None:
    """Before: the daemon went on downloading, then aborted with tracebacks. Now it stops at once with one
    line, keeps the verified chunk, and a later load fetches only the rest."""
    data = os.urandom(CHUNK + MB)
    provider = Provider(data, hold_from=CHUNK)
    with scripted(provider) as peers:
        receiver = receiver_of(provider, daemon_factory, peers)
        uri = provider.uri("alone.bin")
        first = terminals([script("load"), uri], receiver)
        wait_until(lambda: (dl.sidecar(receiver, provider.sha1) or {}).get("verified") == [0], 60.0,
                   "the first chunk verified")
        first.ctrl_c()
        assert first.wait(20.0) == 130, first.text()
        stopped = wait_until(
            lambda: [line for line in receiver.log_text().splitlines() if "no client is waiting" in line],
            10.0, "the daemon's line about the stopped download",
        )
        assert len(stopped) == 1, stopped
        assert (dl.sidecar(receiver, provider.sha1) or {}).get("verified") == [0]
        asked_before = len(provider.asked)
        provider.release()
        again = terminals([script("load"), uri], receiver)
        assert again.wait(120) == 0, again.text()
        lines = [line.strip() for line in again.text().replace("\r", "\n").splitlines() if line.strip()]
        assert dl.sha1_file(lines[-1]) == provider.sha1
        # The bar ends with one summary line, decimal units throughout (before: the bar vanished, MiB vs MB/s).
        summary = [line for line in lines if line.startswith("loaded ")]
        assert summary and "21.0 MB in" in summary[-1] and "MB/s" in summary[-1] and "from 1 provider" in summary[-1]
        assert "MiB" not in again.text() and "Error" not in again.text()
    assert all(start >= CHUNK for start, _end in provider.asked[asked_before:]), provider.asked
    no_tracebacks(receiver)


# ---- item 4: the daemon stops mid-load -----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_daemon_stopping_mid_load_is_named(daemon_factory: Any, sig: int) -> None:
    """Before: 'Error: file not found' (exit 3). Now 'the daemon stopped during the load' (exit 1)."""
    data = os.urandom(CHUNK + MB)
    provider = Provider(data, hold_from=0)
    with scripted(provider) as peers:
        receiver = receiver_of(provider, daemon_factory, peers)
        load = dl.Load(receiver, provider.uri("stopped.bin"))
        try:
            # the first progress line now comes at once ("searching"): wait until a range is really asked for
            wait_until(lambda: bool(provider.asked), 30.0, "the provider to be asked for a range")
            receiver.stop(sig=sig)
            code = load.finish(30.0)
        finally:
            load.close()
            provider.release()
    assert code == 1, (code, load.stderr)
    errors = [m for m in load.seen if m.get("type") == "error"]  # under --json the error is JSON on stdout
    assert [(e["code"], e["message"]) for e in errors] == [("daemon_stopped", "the daemon stopped during the load")]
    assert load.stderr == ""


# ---- item 5: a daemon on another control port -----------------------------------------------------------


def test_clients_find_a_daemon_started_on_another_control_port(daemon_factory: Any) -> None:
    """Before: with --api-port every client said the daemon was not running (they only tried 20431)."""
    d = daemon_factory.new("a")
    port = dl_free_port()
    d.env.pop("KACHERY_P2P_API_PORT")
    d.api_port = port
    d.start(["--api-port", str(port)])
    result = d.run("node-info", "--json")
    assert result.returncode == 0, result.stderr
    assert f'"apiPort": {port}' in result.stdout
    assert d.api("get_channels") == []
    assert d.stop() == 0
    assert not (d.config_dir / "api-port").exists()
    gone = d.run("node-info")
    assert gone.returncode != 0 and "not running" in gone.stderr


def dl_free_port() -> int:
    return free_tcp_port()

