"""The control endpoint: 127.0.0.1 only, a secret token on every route but /probe, secrets kept 0600."""

from __future__ import annotations

import json
import stat
import urllib.parse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

JOIN = json.dumps({"name": "intruders"}).encode()
JSON = {"Content-Type": "application/json"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listening_addresses(port: int) -> list[str]:
    """Local addresses (as /proc/net/tcp* hex) of sockets in LISTEN state on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":
                found.append(address)
    return found


def test_requests_without_the_right_token_get_401_and_change_nothing(daemon_factory) -> None:
    d = daemon_factory.start("a")
    token = d.token()
    quoted = urllib.parse.quote(token)
    bad_auth: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": token},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"X-Api-Token": token},
    ]
    for headers in bad_auth:
        for method, path, body in [
            ("POST", "/channels/join", JOIN),
            ("GET", "/channels", None),
            ("GET", "/node-info", None),
            ("POST", "/read", json.dumps({"uri": "sha1://" + "0" * 40}).encode()),
            ("POST", "/halt", b"{}"),
        ]:
            status, reply = d.request(method, path, body, {**JSON, **headers}, auth=False)
            assert status == 401, (method, path, headers, status, reply)
    # the token in the query string is not accepted either
    for query in (
        f"token={quoted}",
        f"access_token={quoted}",
        f"api_token={quoted}",
        f"authorization=Bearer%20{quoted}",
    ):
        status, _ = d.request("POST", f"/channels/join?{query}", JOIN, JSON, auth=False)
        assert status == 401, query
        status, _ = d.request("POST", f"/halt?{query}", b"{}", JSON, auth=False)
        assert status == 401, query
    # nothing changed, and the daemon still runs
    assert d.api("get_channels") == []
    assert (
        not (d.config_dir / "channels.json").exists() or "intruders" not in (d.config_dir / "channels.json").read_text()
    )
    assert d.proc is not None and d.proc.poll() is None
    assert d.probe() is not None
    # /probe needs no token and tells nothing secret
    status, body = d.request("GET", "/probe", auth=False)
    assert status == 200 and token not in body.decode()
    # with the token, the same request works
    status, _ = d.request("POST", "/channels/join", JOIN, JSON)
    assert status == 200
    assert d.api("get_channels") == ["intruders"]


def test_secret_files_are_private_and_control_port_is_loopback_only(daemon_factory) -> None:
    d = daemon_factory.start("a")
    assert mode(d.token_path) == 0o600
    assert mode(d.config_dir / "private.pem") == 0o600
    assert mode(d.config_dir) & 0o077 == 0
    assert listening_addresses(d.api_port) == ["0100007F"]


def test_token_is_never_logged(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory.start("a", extra_args=("-vv",))
    token = d.token()
    src = tmp_path / "f.txt"
    src.write_text("some content\n")
    uri = d.run("store", str(src)).stdout.strip()
    for args in (
        ("load", uri),
        ("cat", uri),
        ("find", uri, "--timeout", "1"),
        ("node-info",),
        ("join-channel", "c1"),
        ("get-channels",),
        ("load", "sha1://" + "0" * 40, "--timeout", "1"),
    ):
        result = d.run(*args)
        assert token not in result.stdout + result.stderr
    d.request("GET", f"/channels?token={urllib.parse.quote(token)}", auth=False)
    d.request("GET", "/no-such-route")
    d.request("POST", "/store", b"not json", JSON)
    assert d.stop() == 0
    log = d.log_text()
    assert token not in log
    assert token[:16] not in log


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604], ids=["644", "640", "604"])
def test_refuses_a_private_key_others_can_read(daemon_factory, bad_mode: int) -> None:
    d = daemon_factory.new("a")
    d.config_dir.mkdir(mode=0o700)
    key_path = d.config_dir / "private.pem"
    key_path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(bad_mode)
    result = d.run("start-daemon", "--port", "0", "--no-lan-discovery", timeout=20)
    assert result.returncode != 0
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error:"), result.stderr
    assert not d.token_path.exists()
    assert d.probe() is None
    assert mode(key_path) == bad_mode, "the daemon must not silently change the user's file"
