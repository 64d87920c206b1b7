"""What the commands a user types many times load at start-up (each module costs every run time).

Not a timing test: it fails when a change makes ``kachery-p2p-load`` (or -cat, -store, -find, -node-info)
import something it does not need: http.client (and the email package it pulls in), ssl, asyncio, the
daemon, QUIC, cryptography, the store's writer, the whole ``kachery-p2p`` command group.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import kachery_p2p.cli.client_cmds as client_cmds
import kachery_p2p.cli.main as main

HOT = ("load", "cat", "store", "find", "node-info")
MUST_NOT_LOAD = {
    "http.client", "email", "ssl", "asyncio", "aioquic", "cryptography", "aiohttp", "hashlib", "tempfile", "pickle",
    "sqlite3", "kachery_p2p.config", "kachery_p2p.daemon", "kachery_p2p.quic", "kachery_p2p.relay",
    "kachery_p2p.store.filestore", "kachery_p2p.cli.main", "kachery_p2p.cli.store_cmds", "kachery_p2p.cli.link",
    "kachery_p2p.client.feeds", "socket", "selectors",
}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("command", HOT)
def test_a_hot_command_loads_only_what_it_uses(command: str, tmp_path: Path) -> None:
    # The real command runs up to the connection (refused: nothing listens), and reports it in one line.
    (tmp_path / "api-token").write_text("token")
    (tmp_path / "data.bin").write_bytes(b"x")
    args = {"store": [str(tmp_path / "data.bin")], "node-info": []}.get(command, ["sha1://" + "0" * 40])
    function = command.replace("-", "_") + "_cmd"
    code = (
        "import json, sys\n"
        f"from kachery_p2p.cli.client_cmds import {function}\n"
        "try:\n"
        f"    {function}({args!r}, prog_name='kachery-p2p-{command}')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] not in ('encodings',))\n"
        "print(json.dumps({'code': code, 'modules': mods}))\n"
    )
    env = {"KACHERY_P2P_CONFIG_DIR": str(tmp_path), "KACHERY_P2P_API_PORT": str(_closed_port()), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    report = json.loads(result.stdout)
    assert report["code"] != 0
    assert result.stderr.startswith("Error: the kachery-p2p daemon is not running (nothing answers on 127.0.0.1:")
    assert result.stderr.count("\n") == 1
    loaded = set(report["modules"])
    heavy = {m for m in loaded if m in MUST_NOT_LOAD or any(m.startswith(p + ".") for p in MUST_NOT_LOAD)}
    assert heavy == set()


def test_the_hot_entry_points_skip_the_command_group() -> None:
    text = (Path(main.__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    lines = [line.replace('"', "") for line in text.splitlines() if line.startswith("kachery-p2p")]
    scripts = dict(line.split(" = ", 1) for line in lines)
    for command in HOT:
        function = command.replace("-", "_") + "_cmd"
        assert scripts[f"kachery-p2p-{command}"] == f"kachery_p2p.cli.client_cmds:{function}"
        # ...and ``kachery-p2p <command>`` runs the very same command object.
        assert main.cli.commands[command] is getattr(client_cmds, function)
