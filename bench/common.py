"""Small helpers shared by the benchmarks: reporting, child processes, memory, ports.

Every result is printed twice: a human line, then one JSON line that starts with ``{"bench":``
so CI logs can be grepped (``grep '^{"bench":'``). A result may carry a target from the performance
issue (``target="ratio>=2.5"`` or ``target="value<=20"``): the table then says whether it is met.
This is information only: no benchmark asserts timing.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent
JSON_PREFIX = '{"bench":'


_TARGET_RE = re.compile(r"^(value|ratio)(<=|>=)([0-9.]+)$")


def target_met(result: dict[str, Any]) -> bool | None:
    """Whether ``result`` meets its target ("value<=20", "ratio>=2.5"); None without target or figure."""
    target = result.get("target")
    if not target:
        return None
    match = _TARGET_RE.match(str(target).replace(" ", ""))
    if match is None:
        raise ValueError(f"bad target {target!r}: use value<=N, value>=N, ratio<=N or ratio>=N")
    what, op, threshold = match.group(1), match.group(2), float(match.group(3))
    figure = result.get(what)
    if figure is None:
        return None
    return bool(figure <= threshold if op == "<=" else figure >= threshold)


def make_result(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    *,
    target: str | None = None,
    baseline_is: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a result dict; ``ratio`` is value/baseline when a baseline is given; ``met`` says whether
    ``target`` (e.g. "ratio>=2.5", "value<=20") holds; ``baseline_is`` names what the baseline is."""
    ratio = value / baseline if baseline else None
    result: dict[str, Any] = {"bench": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}
    if baseline_is is not None:
        result["baseline_is"] = baseline_is
    if target is not None:
        result["target"] = target
    result.update(extra)
    if target is not None:
        result["met"] = target_met(result)
    return result


def report(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    *,
    target: str | None = None,
    baseline_is: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Print a human line and a greppable JSON line for one result, and return the result dict."""
    result = make_result(name, value, unit, baseline, target=target, baseline_is=baseline_is, **extra)
    human = f"[bench] {name}: {value:.2f} {unit}"
    if baseline:
        human += f" (baseline {baseline:.2f}"
        human += f" = {baseline_is}" if baseline_is else ""
        human += f", ratio {result['ratio']:.2f}x)"
    if target:
        human += f" [target {target}: {'met' if result['met'] else 'NOT met'}]"
    if extra:
        human += "  " + " ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    print(human, flush=True)
    print(json.dumps(result, sort_keys=False), flush=True)
    return result


def skip(name: str, reason: str) -> dict[str, Any]:
    """Print (and return, for the table) that benchmark ``name`` was skipped, and why."""
    result = {"bench": name, "skipped": reason}
    print(f"[bench] {name}: skipped ({reason})", flush=True)
    print(json.dumps(result), flush=True)
    return result


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_table(results: Sequence[dict[str, Any]]) -> None:
    """Print a fixed-width summary table of result dicts: each figure next to its same-run baseline,
    the ratio, the issue's target and whether it is met (information only)."""
    rows = [("bench", "figure", "unit", "baseline", "ratio", "target", "met", "baseline is / config")]
    for r in results:
        if "skipped" in r:
            rows.append((str(r["bench"]), "-", "-", "-", "-", "-", "-", f"SKIPPED: {r['skipped']}"))
            continue
        met = r.get("met")
        notes = [str(r["baseline_is"])] if r.get("baseline_is") and r.get("baseline") is not None else []
        if r.get("config"):
            notes.append(str(r["config"]))
        rows.append(
            (
                str(r["bench"]),
                _num(r["value"]),
                str(r["unit"]),
                "-" if r.get("baseline") is None else _num(r["baseline"]),
                "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
                str(r.get("target") or "-"),
                "-" if met is None else ("yes" if met else "NO"),
                " | ".join(notes),
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


# -- options shared by the suite ---------------------------------------------------------------------


def bench_parser(name: str, description: str, mib: tuple[int, int] | None = None) -> argparse.ArgumentParser:
    """An argument parser with the suite-wide options: ``--quick`` (smaller sizes) and ``--mib``
    (``mib`` = (full, quick) defaults; benchmarks without a size accept --mib and ignore it)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, so the suite takes a few minutes")
    if mib is None:
        parser.add_argument("--mib", type=int, default=None, help="ignored: this benchmark has a fixed size")
    else:
        parser.add_argument("--mib", type=int, default=None, help=f"MiB to load (default {mib[0]}, --quick {mib[1]})")
    return parser


def pick_mib(args: argparse.Namespace, full: int, quick: int) -> int:
    return int(args.mib) if args.mib else (quick if args.quick else full)


# -- numbers -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- processes: CPU and memory -----------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def idle_usage(pid: int, seconds: float) -> dict[str, float]:
    """CPU % (of one core) of ``pid`` over ``seconds`` of wall clock, and its VmRSS at the end (bytes)."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    return {"cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0), "rss": float(measure_rss(pid)["VmRSS"])}


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of ``pid`` to its current RSS (``echo 5 > /proc/<pid>/clear_refs``); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples VmRSS of a process in a thread every ``interval`` seconds; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, measure_rss(self.pid).get("VmRSS", 0))
                self.samples += 1
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- payloads ------------------------------------------------------------------------------------------


def write_payload(path: str | os.PathLike[str], mib: int, seed: bytes | None = None) -> str:
    """Write ``mib`` MiB that no other payload shares (a random 1 MiB block, each MiB prefixed with a
    random seed and its index, so no two MiB and no two payloads are alike); return the sha1."""
    seed = seed if seed is not None else os.urandom(8)
    digest = hashlib.sha1()
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for index in range(mib):
            piece = seed[:8].ljust(8, b"\0") + index.to_bytes(8, "big") + block[16:]
            handle.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def sha1_file(path: str | os.PathLike[str]) -> str:
    """sha1 of a file, read in 8 MiB blocks (no hashlib.file_digest: Python 3.10 has none)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def patched_environ(env: dict[str, str], keys: Sequence[str]) -> Iterator[None]:
    """Set os.environ[k] = env[k] for ``keys`` inside the block (the Python API reads them per call)."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            os.environ[k] = env[k]
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- a timed `kachery-p2p-load --json` ---------------------------------------------------------------


@dataclass
class LoadRun:
    """One ``kachery-p2p-load --json`` run. Times are seconds since ``started`` (time.monotonic())."""

    started: float
    rc: int | None = None
    first_line: float | None = None  # the first JSON line with bytesTotal: providers found, the download starts
    first_byte: float | None = None  # first_line + the daemon's firstByteSec
    done: float | None = None  # the "done" line
    elapsed: float = 0.0  # until the process ended (or was killed)
    bytes_loaded: int = 0
    bytes_total: int | None = None
    path: str | None = None
    paths: list[str] = field(default_factory=list)  # link kinds seen in progress ("direct", "relayed")
    timed_out: bool = False
    stderr: str = ""
    error: str = ""  # the message of a --json error line

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.path is not None

    def transfer_seconds(self) -> float | None:
        """From the first byte to the done line: the transfer alone."""
        if self.first_byte is None or self.done is None:
            return None
        return self.done - self.first_byte


def timed_load(
    argv: Sequence[str],
    env: dict[str, str],
    timeout: float,
    popen: Callable[..., subprocess.Popen[bytes]] | None = None,
) -> LoadRun:
    """Run ``argv`` (a ``load --json URI`` command, maybe wrapped in ``ip netns exec``) and time its JSON
    lines. After ``timeout`` seconds the command is killed (by its PID) and ``timed_out`` set: what it
    had reached is in ``bytes_loaded``. ``popen`` defaults to subprocess.Popen (a lab host's popen works)."""
    start = popen or subprocess.Popen
    with tempfile.TemporaryFile() as err:
        run = LoadRun(started=time.monotonic())
        proc = start(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        try:
            deadline = run.started + timeout
            while True:
                try:
                    line = read_line(proc, max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    run.timed_out = True
                    break
                except RuntimeError:  # stdout closed: the command ended
                    break
                now = time.monotonic() - run.started
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                # The first line that names the size: providers were found and the download starts
                # (the daemon's firstByteSec counts from there). Earlier lines say "searching".
                if run.first_line is None and "bytesTotal" in message:
                    run.first_line = now
                if run.first_byte is None and "firstByteSec" in message:
                    run.first_byte = (run.first_line if run.first_line is not None else now) + float(
                        message["firstByteSec"]
                    )
                if "bytesLoaded" in message:
                    run.bytes_loaded = max(run.bytes_loaded, int(message["bytesLoaded"]))
                if message.get("bytesTotal") is not None:
                    run.bytes_total = int(message["bytesTotal"])
                for kind in message.get("paths") or []:
                    if kind not in run.paths:
                        run.paths.append(str(kind))
                if message.get("type") == "error":
                    run.error = str(message.get("message", ""))
                if message.get("type") == "done":
                    run.done = now
                    run.path = str(message["path"])
            if run.timed_out:
                proc.kill()
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                run.timed_out = True
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        run.elapsed = time.monotonic() - run.started
        run.rc = proc.returncode
        err.seek(0)
        run.stderr = err.read().decode(errors="replace")
    if run.done is not None and run.bytes_total is not None:
        run.bytes_loaded = run.bytes_total
    return run
