"""Shared fixtures: ``daemon_factory`` starts real kachery-p2p daemons as subprocesses.

Each daemon gets its own temp config dir, storage dir, HOME and a free control port, and always runs
with ``--port 0 --no-lan-discovery`` so tests only ever talk to 127.0.0.1. Everything started is
stopped (SIGTERM, then SIGKILL after a deadline) at teardown, and the test fails if a process leaked.

    def test_x(daemon_factory):
        a = daemon_factory.start("a")
        uri = a.run("store", "file.txt").stdout.strip()   # kachery-p2p-store file.txt
        assert a.api("load_file", uri) is not None          # kachery_p2p.load_file in this process
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
BIN_DIR = os.path.dirname(sys.executable)
SAFE_ARGS = ("--port", "0", "--no-lan-discovery")
# Daemons started by tests never ask this machine's router for a port mapping (tests talk only to loopback and
# to their own namespaces); a test that wants port mapping passes --port-mapping explicitly.
os.environ["KACHERY_P2P_PORT_MAPPING"] = "0"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Write kachery_p2p's bytecode once: the daemons and commands the tests start by the hundred would
    otherwise recompile every changed module at each start when PYTHONDONTWRITEBYTECODE is set.

    And let the commands the tests start hear Ctrl-C: a suite started in the background by a script
    (``make test &``, ``nohup``) inherits SIGINT ignored, and so would every command it starts, so the
    tests that press Ctrl-C or send SIGINT saw the command go on (3 failures in a background run). A
    handler here is reset to the default in each child at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    import compileall

    import kachery_p2p

    compileall.compile_dir(os.path.dirname(kachery_p2p.__file__), quiet=1)


def free_tcp_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def environ_applied(env: Mapping[str, str]) -> Iterator[None]:
    """Temporarily set os.environ to include ``env`` (the client reads the environment at each call)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One raw HTTP request to 127.0.0.1:port; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class DaemonHandle:
    """One daemon's dirs, environment and process (``proc`` is None until started)."""

    label: str
    root: Path
    env: dict[str, str]
    config_dir: Path
    storage_dir: Path
    api_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- process control ---------------------------------------------------------------------
    def spawn(self, extra_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start a daemon process with this handle's env without waiting (output appended to the log)."""
        argv = [sys.executable, "-m", "kachery_p2p", "start-daemon", "--label", self.label, *SAFE_ARGS, *extra_args]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def start(self, extra_args: Sequence[str] = ()) -> DaemonHandle:
        """Start the daemon (again, after stop: same dirs and port) and wait until it answers /probe."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = proc = self.spawn(extra_args)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"daemon {self.label} exited with {proc.returncode}:\n{self.log_text()}")
            if self.token_path.exists() and self.probe() is not None:
                return self
            if time.monotonic() > deadline:
                pytest.fail(f"daemon {self.label} not ready after {READY_TIMEOUT} s:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait; the exit code (SIGKILL and a test failure after ``timeout``)."""
        proc = self.proc
        assert proc is not None, "never started"
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                pytest.fail(f"daemon {self.label} ignored signal {sig} for {timeout} s:\n{self.log_text()}")
        return int(proc.returncode)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        return int(self.proc.wait(timeout))

    # -- talking to it -----------------------------------------------------------------------
    @property
    def token_path(self) -> Path:
        return self.config_dir / "api-token"

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def probe(self) -> dict[str, Any] | None:
        """The /probe answer, or None if nothing answers."""
        try:
            status, body = http_request(self.api_port, "GET", "/probe", timeout=2.0)
        except (OSError, http.client.HTTPException):
            return None
        return json.loads(body) if status == 200 else None

    @property
    def node_id(self) -> str:
        info = self.probe()
        assert info is not None, f"daemon {self.label} does not answer"
        return str(info["nodeId"])

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, bytes]:
        """A raw HTTP request to the control endpoint, with the right token unless ``auth`` is False."""
        all_headers = dict(headers or {})
        if auth:
            all_headers["Authorization"] = f"Bearer {self.token()}"
        return http_request(self.api_port, method, path, body, all_headers)

    def run(
        self,
        command: str,
        *args: str,
        input: bytes | str | None = None,
        check: bool = False,
        text: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[Any]:
        """Run the console script ``kachery-p2p-<command>`` (as users do) with this handle's env."""
        script = shutil.which(f"kachery-p2p-{command}", path=BIN_DIR)
        assert script is not None, f"console script kachery-p2p-{command} not installed in {BIN_DIR}"
        return self._run([script, *args], input, check, text, timeout)

    def run_many(self, commands: Sequence[Sequence[str]], **kwargs: Any) -> list[subprocess.CompletedProcess[Any]]:
        """``run`` each ``(command, *args)`` concurrently (independent commands only); results in order."""
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            return list(pool.map(lambda c: self.run(*c, **kwargs), commands))

    def cli(
        self,
        *args: str,
        input: bytes | str | None = None,
        check: bool = False,
        text: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``python -m kachery_p2p <args>`` (the ``kachery-p2p`` group) with this handle's env."""
        return self._run([sys.executable, "-m", "kachery_p2p", *args], input, check, text, timeout)

    def _run(
        self, argv: list[str], input: bytes | str | None, check: bool, text: bool, timeout: float
    ) -> subprocess.CompletedProcess[Any]:
        if text and isinstance(input, bytes):
            input = input.decode()
        return subprocess.run(
            argv,
            env=self.env,
            cwd=self.root,
            input=input,
            capture_output=True,
            text=text,
            check=check,
            timeout=timeout,
        )

    def api(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``kachery_p2p.<fn_name>`` in this process with this handle's environment."""
        import kachery_p2p

        with environ_applied(self.env):
            result = getattr(kachery_p2p, fn_name)(*args, **kwargs)
            if hasattr(result, "__next__"):  # generators run lazily: drain them inside the env
                result = list(result)
            return result

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


class DaemonFactory:
    """Makes handles (``new``) and running daemons (``start``); ``close`` stops all of them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.handles: list[DaemonHandle] = []

    def new(self, label: str = "a") -> DaemonHandle:
        """Dirs, env and a port for a daemon, not started (pre-populate its dirs, then ``.start()``)."""
        root = self.base / f"{label}-{len(self.handles)}"
        home = root / "home"
        for path in (root, home):
            path.mkdir(parents=True)
        config_dir, storage_dir = root / "config", root / "storage"
        port = free_tcp_port()
        env = {
            "KACHERY_P2P_CONFIG_DIR": str(config_dir),
            "KACHERY_STORAGE_DIR": str(storage_dir),
            "KACHERY_P2P_API_PORT": str(port),
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            # not inherited from os.environ (above): without it every daemon asked this machine's router for a
            # port mapping, and its exit waited for the UPnP search thread (up to 6 s of each teardown)
            "KACHERY_P2P_PORT_MAPPING": os.environ["KACHERY_P2P_PORT_MAPPING"],
        }
        handle = DaemonHandle(label, root, env, config_dir, storage_dir, port, root / "daemon.log")
        self.handles.append(handle)
        return handle

    def start(self, label: str = "a", extra_args: Sequence[str] = ()) -> DaemonHandle:
        return self.new(label).start(extra_args)

    def close(self) -> list[str]:
        """Stop every process still running; the list of those that needed SIGKILL."""
        procs = [p for h in self.handles for p in h.procs]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        killed: list[str] = []
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                killed.append(f"pid {proc.pid}: {proc.args!r}")
        return killed


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        killed = factory.close()
    leaked = [p.pid for h in factory.handles for p in h.procs if p.poll() is None]
    assert not leaked, f"daemon processes still running: {leaked}"
    assert not killed, f"daemons needed SIGKILL at teardown: {killed}"
    for handle in factory.handles:
        if handle.proc is not None:
            assert handle.probe() is None, f"port {handle.api_port} still answers after teardown"
