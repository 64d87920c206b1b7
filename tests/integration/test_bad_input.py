"""Every user mistake gives one ``Error:`` line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

SHA1 = "a9993e364706816aba3e25717850c26c9cd0d89d"  # sha1("abc")
UNKNOWN = "0123456789abcdef0123456789abcdef01234567"


def assert_one_error_line(result: subprocess.CompletedProcess[Any], what: object = "") -> None:
    where = f"{what}: rc={result.returncode} stdout={result.stdout!r} stderr={result.stderr!r}"
    assert result.returncode != 0, where
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, where
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), where
    assert result.stdout == "", where


@pytest.fixture
def abc_file(tmp_path: Path) -> Path:
    path = tmp_path / "abc.txt"
    path.write_bytes(b"abc")
    return path


def test_daemon_not_running(daemon_factory, abc_file: Path) -> None:
    idle = daemon_factory.new("idle")  # dirs and port, no daemon
    uri = f"sha1://{SHA1}/abc.txt"
    commands = [
        ("store", str(abc_file)),
        ("load", uri),
        ("cat", uri),
        ("find", uri),
        ("node-info",),
        ("get-channels",),
        ("join-channel", "lab"),
        ("leave-channel", "lab"),
        ("stop-daemon",),
    ]
    for (command, *_), result in zip(commands, idle.run_many(commands), strict=True):
        assert_one_error_line(result, command)
        assert "kachery-p2p-start-daemon" in result.stderr, result.stderr
    # a token left behind by a killed daemon: nothing listens on the port
    idle.config_dir.mkdir(parents=True)
    (idle.config_dir / "api-token").write_text("stale-token\n")
    for (command, *_), result in zip(commands, idle.run_many(commands), strict=True):
        assert_one_error_line(result, f"stale token, {command}")
        assert "not running" in result.stderr
        assert "stale-token" not in result.stderr


BAD_URIS = [
    "",
    "not-a-uri",
    "sha1://",
    "sha1:///abc.txt",
    f"sha1:////{SHA1}/x",
    f"sha1:/{SHA1}/x",
    "sha1://abc/x",
    f"sha1://{SHA1[:-1]}/x",
    f"sha1://{SHA1}0/x",
    f"sha1://{SHA1[:-1]}g/x",
    f"md5://{SHA1}/x",
    f"http://example.org/{SHA1}",
    f"kachery://{SHA1}/x",
    f"sha1:{SHA1}",
]


def test_malformed_uris(daemon_factory) -> None:
    d = daemon_factory.start("a")
    commands = [("load", bad) for bad in BAD_URIS]
    commands += [(command, bad) for bad in BAD_URIS[::3] for command in ("cat", "find")]
    for args, result in zip(commands, d.run_many(commands), strict=True):
        assert_one_error_line(result, args)
    assert d.proc is not None and d.proc.poll() is None


def test_file_not_found_and_bad_paths(daemon_factory, tmp_path: Path, abc_file: Path) -> None:
    d = daemon_factory.start("a")
    uri = f"sha1://{UNKNOWN}/missing.txt"
    for command in ("load", "cat", "find"):
        result = d.run(command, uri, "--timeout", "1")
        assert_one_error_line(result, command)
        assert result.returncode == 3, (command, result.returncode)
    assert_one_error_line(d.run("load", uri, "--timeout", "1", "--dest", str(tmp_path / "out")), "load --dest")
    assert not (tmp_path / "out").exists()

    # paths that cannot be stored
    assert_one_error_line(d.run("store", str(tmp_path)), "store a directory")
    assert_one_error_line(d.run("store", str(tmp_path / "nope.txt")), "store a missing file")
    assert_one_error_line(d.run("store"), "store without a path")

    # load --dest into something that is not a writable file path
    uri_abc = d.run("store", str(abc_file)).stdout.strip()
    assert uri_abc == f"sha1://{SHA1}/abc.txt"
    assert_one_error_line(d.run("load", uri_abc, "--dest", str(tmp_path)), "load --dest a directory")


def test_load_dest_in_missing_directory(daemon_factory, tmp_path: Path, abc_file: Path) -> None:
    d = daemon_factory.start("a")
    uri = d.run("store", str(abc_file)).stdout.strip()
    result = d.run("load", uri, "--dest", str(tmp_path / "no" / "such" / "dir" / "f"))
    assert_one_error_line(result, "load --dest into a missing directory")


@pytest.mark.skipif(
    hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0, reason="root can read any file"
)
def test_unreadable_file(daemon_factory, abc_file: Path) -> None:
    d = daemon_factory.start("a")
    abc_file.chmod(0o000)
    assert_one_error_line(d.run("store", str(abc_file)), "store an unreadable file")


def test_bad_options(daemon_factory, abc_file: Path) -> None:
    d = daemon_factory.start("a")
    uri = d.run("store", str(abc_file)).stdout.strip()
    cases: list[tuple[str, ...]] = [
        ("store", "--bogus", str(abc_file)),
        ("store", str(abc_file), str(abc_file)),
        ("load",),
        ("load", uri, "--dest"),
        ("load", uri, "--timeout", "soon"),
        ("cat", uri, "--start", "-1"),
        ("cat", uri, "--end", "-5"),
        ("cat", uri, "--start", "abc"),
        ("cat", uri, "--start", "1.5"),
        ("cat", uri, "--start", "2", "--end", "1"),
        ("cat", uri, "--start", "4"),  # past the end of a 3-byte file
        ("find", uri, "--timeout", "x"),
        ("join-channel",),
        ("join-channel", "has space"),
        ("join-channel", ""),
        ("node-info", "--yaml"),
        ("start-daemon", "--port", "notaport", "--no-lan-discovery"),
        ("start-daemon", "--port", "0", "--no-lan-discovery", "--api-port", "70000"),
        ("start-daemon", "--port", "0", "--no-lan-discovery", "--label", "x" * 65),
    ]
    for args, result in zip(cases, d.run_many(cases, timeout=20), strict=True):
        assert_one_error_line(result, args)
    for args in [("no-such-command",), ("cat", uri, "--start", "-1")]:
        assert_one_error_line(d.cli(*args), ("kachery-p2p", *args))
    # the daemon took none of it badly
    assert d.proc is not None and d.proc.poll() is None
    assert d.api("get_channels") == []
