"""Hostile local input against a real daemon (issue 10 #10, #13 and the Host check)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

JSON = {"Content-Type": "application/json"}
URI = "sha1://" + "b" * 40


def test_store_of_a_fifo_is_refused_without_blocking_the_daemon(daemon_factory, tmp_path: Path) -> None:
    """#13: /store of a FIFO (bypassing the CLI's check) blocked the event loop for good."""
    d = daemon_factory.start("a")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    for path in (fifo, link, Path("/dev/zero")):
        started = time.monotonic()
        status, reply = d.request("POST", "/store", json.dumps({"path": str(path), "name": "x"}).encode(), JSON)
        assert status == 400, (path, status, reply)
        assert b"not a regular file" in reply
        assert time.monotonic() - started < 4
        assert d.probe() is not None  # the loop is free
    regular = tmp_path / "regular.txt"
    regular.write_bytes(b"still works")
    status, reply = d.request("POST", "/store", json.dumps({"path": str(regular), "name": "r"}).encode(), JSON)
    assert status == 200, reply


def test_nan_timeouts_are_one_clear_error_and_the_daemon_stays_idle(daemon_factory) -> None:
    """#10: timeoutSec NaN on /find spun a core forever, on /load it logged a traceback."""
    d = daemon_factory.start("a")
    for route in ("/find", "/load", "/read"):
        for value in ("NaN", "Infinity", "1e999", "-1"):
            body = f'{{"uri": "{URI}", "timeoutSec": {value}}}'.encode()
            status, reply = d.request("POST", route, body, JSON)
            assert status == 400, (route, value, reply)
            assert json.loads(reply)["error"]["code"] == "bad_request"
    assert "Traceback" not in d.log_text()
    assert d.proc is not None
    cpu_before = _cpu_seconds(d.proc.pid)
    time.sleep(1.0)
    assert _cpu_seconds(d.proc.pid) - cpu_before < 0.5  # nothing left spinning


def test_dns_rebinding_page_cannot_read_the_node_id(daemon_factory) -> None:
    d = daemon_factory.start("a")
    node_id = d.node_id
    status, reply = d.request("GET", "/probe", None, {"Host": f"rebind.example:{d.api_port}"}, auth=False)
    assert status == 403 and node_id.encode() not in reply
    status, reply = d.request("GET", "/probe", None, {"Host": f"localhost:{d.api_port}"}, auth=False)
    assert status == 200 and node_id.encode() in reply


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_every_json_route_refuses_nan_and_infinity(daemon_factory) -> None:
    """The mutables and feeds routes read their bodies with their own parser, which took NaN and Infinity."""
    d = daemon_factory.start("a")
    for route, body in (("/mutables/set", '{"key": "k", "value": NaN}'),
                        ("/mutables/set", '{"key": Infinity, "value": 1}')):
        status, reply = d.request("POST", route, body.encode(), JSON)
        assert status == 400, (route, body, reply)
        assert json.loads(reply)["error"]["code"] == "bad_request"
    status, reply = d.request("POST", "/mutables/get", b'{"key": "k"}', JSON)
    assert status == 200 and json.loads(reply).get("value") is None, reply  # nothing was stored
    assert "Traceback" not in d.log_text()
