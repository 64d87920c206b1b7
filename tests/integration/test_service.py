"""``kachery-p2p-start-daemon --install-service / --uninstall-service / --log-file``.

The unit is written to a temp dir (``KACHERY_P2P_UNIT_DIR``), which also keeps systemctl out of it:
nothing is ever enabled on the machine running the tests. ``systemd-analyze verify`` checks the unit
where it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kachery_p2p.cli.service import quote, render_unit

BIN = os.path.dirname(sys.executable)


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = os.path.join(BIN, "kachery-p2p-start-daemon")
    return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=60)


def _verify(path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # checked where systemd is installed
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_and_uninstall_service_in_a_unit_dir(tmp_path: Path) -> None:
    units = tmp_path / "units"
    env = {
        **os.environ,
        "KACHERY_P2P_UNIT_DIR": str(units),
        "KACHERY_P2P_CONFIG_DIR": str(tmp_path / "config dir"),
        "KACHERY_STORAGE_DIR": str(tmp_path / "store"),
    }
    result = _run("--install-service", "--label", "lab node 50%", "--bootstrap", "127.0.0.1:14507",
                  "--no-lan-discovery", "--api-port", "20999", env=env)
    assert result.returncode == 0, result.stderr
    name = "kachery-p2p.service"
    path = units / name
    assert f"Wrote {path}" in result.stdout
    assert "Not enabled (KACHERY_P2P_UNIT_DIR is set)" in result.stdout
    assert f"-u {name} -f" in result.stdout  # how to see its logs
    unit = path.read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    # the venv's interpreter (python or python3, whichever ran the command), not the base one it links to
    interpreter, rest = exec_start.removeprefix("ExecStart=").split(" ", 1)
    assert os.path.dirname(interpreter) == BIN and os.path.basename(interpreter).startswith("python")
    assert rest.startswith("-m kachery_p2p start-daemon ")
    for part in ('--label "lab node 50%%"', "--bootstrap 127.0.0.1:14507", "--no-lan-discovery",
                 "--api-port 20999", " -v"):
        assert part in exec_start, exec_start
    assert "--install-service" not in unit
    assert f'Environment="KACHERY_P2P_CONFIG_DIR={tmp_path}/config dir"' in unit
    assert f"Environment=KACHERY_STORAGE_DIR={tmp_path}/store" in unit
    assert "Restart=on-failure" in unit
    _verify(path)

    relay = _run("--install-service", "--relay", "--relay-rate", "5", "-vv", env=env)
    assert relay.returncode == 0, relay.stderr
    relay_unit = (units / "kachery-p2p-relay.service").read_text()
    assert "--relay --relay-rate 5.0 --verbose --verbose\n" in relay_unit and " -v" not in relay_unit
    _verify(units / "kachery-p2p-relay.service")

    removed = _run("--uninstall-service", env=env)
    assert removed.returncode == 0 and not path.exists(), removed.stderr
    again = _run("--uninstall-service", env=env)
    assert again.returncode == 2 and "no service installed" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("system", [False, True])
def test_unit_targets(system: bool) -> None:
    unit = render_unit(["/usr/bin/python3", "-m", "kachery_p2p", "start-daemon"], {}, system, relay=False)
    assert ("WantedBy=multi-user.target" in unit) == system
    assert ("WantedBy=default.target" in unit) == (not system)


def test_quote() -> None:
    assert quote("--label") == "--label"
    assert quote('a "b" $HOME') == '"a \\"b\\" $$HOME"'


def test_log_file(daemon_factory: Any, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    a = daemon_factory.start("a", ["-v", "--log-file", str(log)])
    a.run("join-channel", "logged", check=True)
    a.stop()
    text = log.read_text()
    assert "kachery-p2p daemon" in text and "daemon stopped" in text
    bad = daemon_factory.new("b")
    proc = subprocess.run(
        [sys.executable, "-m", "kachery_p2p", "start-daemon", "--log-file", str(tmp_path / "no" / "such" / "x.log")],
        env=bad.env, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2 and "cannot open --log-file" in proc.stderr


@pytest.mark.parametrize("command", ["ls", "du", "rm", "transfers", "cancel", "ui", "start-daemon"])
def test_version_and_environment_in_help(command: str) -> None:
    script = os.path.join(BIN, f"kachery-p2p-{command}")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "0." in version.stdout, version.stderr
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "KACHERY_P2P_CONFIG_DIR" in shown.stdout, shown.stdout
