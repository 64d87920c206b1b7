"""What a load writes and says (issue 9): --dest like cp, cat into a closed pipe, config dir mistakes,
md5 URIs, unicode channel names, error messages that say what happened. One daemon each, on loopback."""

from __future__ import annotations

import os
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

BIN_DIR = os.path.dirname(sys.executable)


def script(name: str) -> str:
    path = shutil.which(f"kachery-p2p-{name}", path=BIN_DIR)
    assert path is not None
    return path


def stored(d: Any, tmp_path: Path, data: bytes, name: str = "f.bin") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    result = d.run("store", str(path))
    assert result.returncode == 0, result.stderr
    return str(result.stdout.strip())


def one_error_line(result: subprocess.CompletedProcess[Any]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


# ---- item 3: --dest writes like cp ----------------------------------------------------------------------


def test_dest_replaces_a_regular_file_atomically_and_honours_the_umask(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory.start("a")
    data = os.urandom(5000)
    uri = stored(d, tmp_path, data)
    new = tmp_path / "new.bin"
    result = subprocess.run(
        [script("load"), uri, "--dest", str(new)], env=d.env, capture_output=True, text=True,
        preexec_fn=lambda: os.umask(0o027), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert new.read_bytes() == data
    assert stat.S_IMODE(new.stat().st_mode) == 0o640  # before: 0600 whatever the umask
    # An existing file: replaced (a new inode, so a reader of the old one is undisturbed), mode kept.
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    old.chmod(0o604)
    inode = old.stat().st_ino
    assert d.run("load", uri, "--dest", str(old)).returncode == 0
    assert old.read_bytes() == data and old.stat().st_ino != inode
    assert stat.S_IMODE(old.stat().st_mode) == 0o604
    # A symlink to a regular file stays a symlink; its target gets the bytes.
    link = tmp_path / "link.bin"
    link.symlink_to(old.name)
    old.write_bytes(b"old again")
    assert d.run("load", uri, "--dest", str(link)).returncode == 0
    assert link.is_symlink() and old.read_bytes() == data


def test_dest_writes_through_a_fifo_and_a_symlink_to_stdout(daemon_factory: Any, tmp_path: Path) -> None:
    """Before: the FIFO and the symlink were replaced by regular files (the FIFO's reader hung)."""
    d = daemon_factory.start("a")
    data = os.urandom(3000)  # fits in a pipe buffer: the reader can read after the writer is done
    uri = stored(d, tmp_path, data)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = d.run("load", uri, "--dest", str(fifo))
        assert result.returncode == 0, result.stderr
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        select.select([reader], [], [], 5.0)
        assert os.read(reader, 10_000) == data
    finally:
        os.close(reader)
    link = tmp_path / "to-stdout"
    link.symlink_to("/proc/self/fd/1")
    result = d.run("load", uri, "--dest", str(link), text=False)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert result.stdout.startswith(data)


def test_dest_dash_writes_stdout_and_a_full_device_is_an_error_not_replaced(
    daemon_factory: Any, tmp_path: Path
) -> None:
    d = daemon_factory.start("a")
    data = os.urandom(2 * 1024 * 1024 + 3)
    uri = stored(d, tmp_path, data)
    result = d.run("load", uri, "--dest", "-", text=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    if not os.access("/dev/full", os.W_OK):
        pytest.skip("no writable /dev/full")
    result = d.run("load", uri, "--dest", "/dev/full")
    assert result.returncode == 1
    assert "No space left on device" in one_error_line(result)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # before (as root): a regular file now


# ---- item 8: cat into a pipe that closes ----------------------------------------------------------------


def test_cat_into_a_closed_pipe_exits_0_and_logs_nothing(daemon_factory: Any, tmp_path: Path) -> None:
    """``kachery-p2p-cat URI | head -c 10``. Before: exit 1, and a WARNING in the daemon's log each time."""
    d = daemon_factory.start("a", ["-v"])
    uri = stored(d, tmp_path, os.urandom(8 * 1024 * 1024))
    for _ in range(2):
        proc = subprocess.Popen([script("cat"), uri], env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(10)) == 10
        proc.stdout.close()
        assert proc.wait(30) == 0
        assert proc.stderr.read() == b""
        proc.stderr.close()
    time.sleep(0.5)  # give the daemon time to notice the closed connection (it must stay silent)
    assert "WARNING" not in d.log_text() and "Traceback" not in d.log_text(), d.log_text()[-2000:]


# ---- item 6: a config dir that is a file ---------------------------------------------------------------


def test_a_config_dir_that_is_a_file_is_one_clear_line(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory.new("a")
    d.config_dir.parent.mkdir(parents=True, exist_ok=True)
    d.config_dir.write_text("not a directory")
    started = d.run("start-daemon", "--port", "0", "--no-lan-discovery", timeout=30)
    assert started.returncode == 2
    assert "KACHERY_P2P_CONFIG_DIR" in one_error_line(started) and "not a directory" in started.stderr
    info = d.run("node-info")
    assert info.returncode == 2 and "not a directory" in one_error_line(info)


# ---- item 7: md5 URIs ----------------------------------------------------------------------------------


def test_md5_uris_are_refused_with_one_clear_line(daemon_factory: Any) -> None:
    """Before: they parsed, then every load and find said 'not found', even when a peer had the file."""
    d = daemon_factory.start("a")
    uri = "md5://" + "0123456789abcdef" * 2 + "/x.txt"
    for command in ("load", "cat", "find"):
        result = d.run(command, uri)
        assert result.returncode == 2, (command, result.stderr)
        assert "md5:// URIs are not supported" in one_error_line(result)


# ---- item 11: unicode channel names -------------------------------------------------------------------


def test_unicode_channel_names(daemon_factory: Any) -> None:
    d = daemon_factory.start("a")
    for name in ("ünïcode", "données-partagées", "频道"):
        result = d.run("join-channel", name)
        assert result.returncode == 0, result.stderr
    assert d.run("get-channels").stdout.splitlines() == ["ünïcode", "données-partagées", "频道"]
    for bad in ("with space", "tab\there", "new\nline", "x" * 201):
        assert d.run("join-channel", bad).returncode == 2, bad


# ---- item 10: messages that say what happened -----------------------------------------------------------


def test_not_found_says_how_long_it_looked_and_what_to_do(daemon_factory: Any) -> None:
    d = daemon_factory.start("a")
    uri = "sha1://" + "1" * 40 + "/x"
    started = time.monotonic()
    result = d.run("load", uri, "--timeout", "30")
    elapsed = time.monotonic() - started
    line = one_error_line(result)
    assert result.returncode == 3
    assert "30 s" not in line and elapsed < 20, line  # before: 'for 30 s' after a second or so
    assert "kachery-p2p-join-channel" in line, line
    d.run("join-channel", "lonely")
    line = one_error_line(d.run("load", uri, "--timeout", "1"))
    assert "--bootstrap" in line, line


def test_taken_ports_are_exit_1_and_name_the_option_given(daemon_factory: Any) -> None:
    a = daemon_factory.start("a")
    b = daemon_factory.new("b")
    taken = b.run("start-daemon", "--api-port", str(a.api_port), "--port", "0", "--no-lan-discovery", timeout=30)
    assert taken.returncode == 1
    line = one_error_line(taken)
    assert "--api-port" in line and "KACHERY_P2P_API_PORT" not in line, line
    info = a.run("node-info", "--json")
    udp = __import__("json").loads(info.stdout)["udpPort"]
    taken = b.run("start-daemon", "--port", str(udp), "--no-lan-discovery", timeout=30)
    assert taken.returncode == 1
    line = one_error_line(taken)
    assert "(None)" not in line and "in use" in line, line


def test_load_json_of_a_binary_file_raises_an_error_of_the_project(daemon_factory: Any, tmp_path: Path) -> None:
    import kachery_p2p as kp

    d = daemon_factory.start("a")
    uri = stored(d, tmp_path, b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(kp.KacheryP2PError, match="not UTF-8 text"):
        d.api("load_json", uri)
    text_uri = stored(d, tmp_path, b"{not json", "t.json")
    with pytest.raises(kp.KacheryP2PError, match="not JSON"):
        d.api("load_json", text_uri)


# ---- item 12: one schema for find, --version everywhere, errors under --json -----------------------------


def test_find_prints_one_documented_schema_and_the_original_on_request(daemon_factory: Any, tmp_path: Path) -> None:
    """Before: every line repeated fields (node_id/nodeId, size/fileSize) next to fileKey."""
    import json

    d = daemon_factory.start("a")
    uri = stored(d, tmp_path, b"0123456789")
    found = d.run("find", uri)
    assert found.returncode == 0, found.stderr
    record = json.loads(found.stdout)
    assert record == {"nodeId": d.node_id, "label": "a", "size": 10, "local": True}
    original = json.loads(d.run("find", uri, "--original-format").stdout)
    sha1 = uri.split("/")[2]
    assert original == {"nodeId": d.node_id, "fileKey": {"sha1": sha1}, "fileSize": 10}


def test_every_command_has_version_and_help_shows_defaults_and_environment(daemon_factory: Any) -> None:
    d = daemon_factory.new("a")
    for command in ("load", "cat", "find", "store", "node-info", "start-daemon", "nat-check", "peers"):
        version = d.run(command, "--version")
        assert version.returncode == 0 and "0." in version.stdout, (command, version.stderr)
        helped = d.run(command, "--help")
        assert "KACHERY_P2P_CONFIG_DIR" in helped.stdout, command
    assert "[default: 5.0" in d.run("find", "--help").stdout


def test_errors_under_json_are_json(daemon_factory: Any) -> None:
    import json

    d = daemon_factory.start("a")
    result = d.run("load", "sha1://" + "2" * 40 + "/x", "--timeout", "0.5", "--json")
    assert result.returncode == 3
    error = json.loads(result.stdout.strip().splitlines()[-1])
    assert error["type"] == "error" and error["code"] == "not_found" and "no peer has" in error["message"]
    bad = d.run("node-info", "--json", "--nope")
    assert bad.returncode == 2 and json.loads(bad.stdout)["code"] == "bad_request"


def test_the_readme_python_snippet_works_as_written(daemon_factory: Any, tmp_path: Path) -> None:
    """Before: ``kp.load_json(uri)`` on the binary file it had just stored raised UnicodeDecodeError."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("```python\nimport kachery_p2p as kp")
    snippet = readme[start + len("```python\n") : readme.index("```", start + 10)]
    d = daemon_factory.start("a")
    result = subprocess.run([sys.executable, "-c", snippet], env=d.env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "](../" not in readme  # no links outside the repository


def test_start_line_shows_ports_store_and_bootstrap(daemon_factory: Any) -> None:
    """Before: 'kachery-p2p daemon running: node <id>' and nothing else."""
    d = daemon_factory.start("a", ["--bootstrap", "127.0.0.1:9"])

    def start_line() -> str | None:
        lines = d.log_text().splitlines()
        return next((line for line in lines if line.startswith("kachery-p2p daemon running:")), None)

    # The control endpoint answers (what start() waits for) a moment before the daemon prints the line
    # (CI: StopIteration, the line not yet written).
    line = wait_until(start_line, 10.0, "the daemon's start line", output=d.log_text)
    assert f"control 127.0.0.1:{d.api_port}" in line and "QUIC udp " in line, line
    assert f"store {d.storage_dir}" in line and "bootstrap 127.0.0.1:9" in line, line


def test_pyproject_uses_the_spdx_license_string() -> None:
    """Before: a license table, which setuptools >= 77 reports with a deprecation banner at every install."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert any(req.startswith("setuptools>=77") for req in project["build-system"]["requires"])
