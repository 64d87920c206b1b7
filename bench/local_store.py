"""Local store and load of one big file through a real daemon, and the daemon's memory.

Starts a daemon in its own temp dirs (``--port 0 --no-lan-discovery``, control port on 127.0.0.1),
writes a file of N MiB of random bytes, then times the user's commands (wall clock, one process each):
``kachery-p2p-store PATH``, ``kachery-p2p-load URI`` (already local: prints the path),
``kachery-p2p-load URI --dest NEW`` (atomic copy out) and ``kachery-p2p-cat URI`` (bytes streamed
through the control endpoint). The baseline of store and load --dest is a plain copy of the file with
fsync, in this process (what the disk allows). Checks the sha1 of the stored file, the --dest copy and the cat output,
and reports the daemon's RSS (VmRSS) idle after start, idle after the operations, and its peak (VmHWM).

    .venv/bin/python -m bench local-store [--mib 1024] [--quick] [--dir /some/disk]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import bench_parser, free_port, measure_rss, pick_mib, report

NAME = "local-store"
MIB = 1024 * 1024
PIECE = 64 * MIB
BIN_DIR = Path(sys.executable).parent


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__.split("\n")[0], mib=(1024, 128))
    parser.add_argument("--dir", default=None, help="where to make the temp dir (default: the system's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per command")
    args = parser.parse_args(argv)
    args.mib = pick_mib(args, 1024, 128)
    return args


def _write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes (os.urandom in 64 MiB pieces); return their sha1."""
    digest = hashlib.sha1()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            piece = os.urandom(min(PIECE, remaining))
            digest.update(piece)
            out.write(piece)
            remaining -= len(piece)
    return digest.hexdigest()


def _sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def _copy_fsync(source: Path, dest: Path) -> float:
    """Seconds for a plain copy with fsync: the floor for storing or copying out the file."""
    start = time.perf_counter()
    with open(source, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 8 * MIB)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - start


def _wait_ready(proc: subprocess.Popen[bytes], port: int, token_path: Path, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if token_path.exists():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/probe")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
        time.sleep(0.02)
    raise TimeoutError(f"daemon not ready within {timeout} s:\n{log.read_text(errors='replace')}")


def _timed(argv: list[str], env: dict[str, str], timeout: float, stdout: Any = subprocess.PIPE) -> tuple[float, str]:
    """Run a command; (wall seconds, stdout text). Raises with stderr on failure."""
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{argv!r} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return seconds, (result.stdout or b"").decode(errors="replace").strip()


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def run(argv: list[str]) -> list[dict[str, Any]]:
    args = _parse(argv)
    size = args.mib * MIB
    tmp = Path(tempfile.mkdtemp(prefix="kachery-bench-local-", dir=args.dir))
    proc: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    try:
        home, config_dir, storage_dir = tmp / "home", tmp / "config", tmp / "storage"
        home.mkdir()
        port = free_port(kind=socket.SOCK_STREAM)
        env = {
            "KACHERY_P2P_CONFIG_DIR": str(config_dir),
            "KACHERY_STORAGE_DIR": str(storage_dir),
            "KACHERY_P2P_API_PORT": str(port),
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        log = tmp / "daemon.log"
        with open(log, "wb") as log_file:
            argv_daemon = [sys.executable, "-m", "kachery_p2p", "start-daemon", "--label", "bench"]
            proc = subprocess.Popen(
                [*argv_daemon, "--port", "0", "--no-lan-discovery"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        _wait_ready(proc, port, config_dir / "api-token", log)
        rss_start = measure_rss(proc.pid)

        source = tmp / "big.bin"
        t0 = time.perf_counter()
        want = _write_random_file(source, size)
        print(f"wrote {args.mib} MiB in {time.perf_counter() - t0:.1f} s", flush=True)
        config = f"{args.mib} MiB, local"

        os.sync()  # every timed step starts with no dirty pages left by the one before
        baseline_s = _copy_fsync(source, tmp / "baseline.bin")  # what the disk allows: copy + fsync
        (tmp / "baseline.bin").unlink()
        os.sync()
        store_s, uri = _timed([str(BIN_DIR / "kachery-p2p-store"), str(source)], env, args.timeout)
        assert uri.startswith(f"sha1://{want}/big.bin"), uri
        load_s, path = _timed([str(BIN_DIR / "kachery-p2p-load"), uri], env, args.timeout)
        assert _sha1_of(Path(path)) == want, "stored file has the wrong sha1"
        dest = tmp / "copy.bin"
        dest_s, printed = _timed([str(BIN_DIR / "kachery-p2p-load"), uri, "--dest", str(dest)], env, args.timeout)
        assert printed == str(dest) and _sha1_of(dest) == want, "--dest copy has the wrong sha1"
        dest.unlink()
        os.sync()
        cat_out = tmp / "cat.bin"
        with open(cat_out, "wb") as out:
            cat_s, _ = _timed([str(BIN_DIR / "kachery-p2p-cat"), uri], env, args.timeout, stdout=out)
        assert _sha1_of(cat_out) == want, "cat output has the wrong sha1"
        cat_out.unlink()
        rss_end = measure_rss(proc.pid)

        mb = size / 1e6
        results.append(report(f"{NAME} store", store_s, "s", baseline_s, config=config, mb_per_s=mb / store_s))
        results.append(report(f"{NAME} load", load_s, "s", None, config=config + ", already in store"))
        results.append(report(f"{NAME} load --dest", dest_s, "s", baseline_s, config=config, mb_per_s=mb / dest_s))
        results.append(report(f"{NAME} cat", cat_s, "s", None, config=config + ", to a file", mb_per_s=mb / cat_s))
        results.append(report(f"{NAME} idle RSS after start", rss_start["VmRSS"] / 1e6, "MB", None))
        results.append(report(f"{NAME} idle RSS after ops", rss_end["VmRSS"] / 1e6, "MB", None, config=config))
        results.append(report(f"{NAME} peak RSS", rss_end["VmHWM"] / 1e6, "MB", None, config=config))
    finally:
        if proc is not None:
            code = _stop(proc)
            if code != 0:
                print(f"warning: daemon exited with {code}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    run(sys.argv[1:])
