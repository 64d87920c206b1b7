"""Small helpers shared by the benchmarks: reporting, child processes, memory, ports.

Every result is printed twice: a human line, then one JSON line that starts with ``{"bench":``
so CI logs can be grepped (``grep '^{"bench":'``).
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent
JSON_PREFIX = '{"bench":'


def make_result(
    name: str, value: float, unit: str, baseline: float | None = None, **extra: Any
) -> dict[str, Any]:
    """Build a result dict; ``ratio`` is value/baseline when a baseline is given."""
    ratio = value / baseline if baseline else None
    return {"bench": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio, **extra}


def report(name: str, value: float, unit: str, baseline: float | None = None, **extra: Any) -> dict[str, Any]:
    """Print a human line and a greppable JSON line for one result, and return the result dict."""
    result = make_result(name, value, unit, baseline, **extra)
    human = f"[bench] {name}: {value:.2f} {unit}"
    if baseline:
        human += f" (baseline {baseline:.2f}, ratio {result['ratio']:.2f}x)"
    if extra:
        human += "  " + " ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    print(human, flush=True)
    print(json.dumps(result, sort_keys=False), flush=True)
    return result


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def print_table(results: Sequence[dict[str, Any]]) -> None:
    """Print a fixed-width summary table of result dicts."""
    rows = [("bench", "value", "unit", "baseline", "ratio", "cpu% rx", "note")]
    for r in results:
        rows.append(
            (
                str(r["bench"]),
                f"{r['value']:.2f}",
                str(r["unit"]),
                "-" if r.get("baseline") is None else f"{r['baseline']:.2f}",
                "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
                "-" if r.get("receiver_cpu_pct") is None else f"{r['receiver_cpu_pct']:.0f}",
                str(r.get("config", "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def make_cert() -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """A fresh self-signed Ed25519 certificate, valid for one day."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kachery-bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    return cert, key


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped for full UDP receive buffers (this network namespace, all sockets)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


class Usage:
    """Snapshot of wall clock, CPU (user/sys) and UDP receive-buffer drops, to diff against."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.user, self.sys = ru.ru_utime, ru.ru_stime
        self.udp_drops = udp_rcvbuf_errors()

    def since(self, start: Usage) -> dict[str, float]:
        wall = self.wall - start.wall
        cpu = (self.user - start.user) + (self.sys - start.sys)
        return {
            "seconds": wall,
            "cpu_user_s": self.user - start.user,
            "cpu_sys_s": self.sys - start.sys,
            "cpu_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
            "udp_rcvbuf_drops": self.udp_drops - start.udp_drops,
        }


def measure_rss(pid: int) -> dict[str, int]:
    """VmRSS (current) and VmHWM (peak) of a live process in bytes, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                num, unit = rest.split()
                assert unit == "kB", unit
                out[key] = int(num) * 1024
    return out


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    """A port that was free a moment ago (racy: prefer binding port 0 and reporting it)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_process(argv: Sequence[str], wrap: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start ``wrap + argv`` (e.g. wrap = ["ip", "netns", "exec", "ns1"]) from the repo root,
    stdout/stderr piped and unbuffered so the first line can be read with a deadline."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [*wrap, *argv],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read one stdout line from ``proc`` byte by byte (so nothing is buffered away from a later
    communicate()), failing after ``timeout`` seconds or if the process exits first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no stdout line from {proc.args!r} within {timeout} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        b = os.read(fd, 1)
        if not b:
            raise RuntimeError(f"{proc.args!r} closed stdout (rc={proc.poll()}) before a full line")
        if b == b"\n":
            return buf.decode()
        buf += b


def run_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[tuple[int, str, str]]:
    """Wait for all processes within one shared deadline and collect (returncode, stdout, stderr).
    On timeout every process still running is killed (only these, by pid) and TimeoutError raised."""
    deadline = time.monotonic() + timeout
    results: list[tuple[int, str, str]] = []
    try:
        for p in procs:
            remaining = max(0.0, deadline - time.monotonic())
            out, err = p.communicate(timeout=remaining)
            results.append((int(p.returncode), out.decode(errors="replace"), err.decode(errors="replace")))
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"processes did not finish within {timeout} s: {e.cmd!r}") from e
    finally:
        kill_all(procs)
    return results


def kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill and reap those of ``procs`` still running."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"warning: pid {p.pid} did not exit after SIGKILL", file=sys.stderr)


def last_json(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError(f"no JSON object line in output: {text[-500:]!r}")
