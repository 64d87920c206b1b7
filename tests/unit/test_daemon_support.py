"""Small daemon helpers: supervised background tasks and the platform module."""

from __future__ import annotations

import asyncio
import builtins
import logging
from typing import Any

import pytest

from kachery_p2p.daemon import sysnet
from kachery_p2p.daemon.tasks import Supervisor


def test_a_failing_task_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise RuntimeError("kaboom")

    async def main() -> Supervisor:
        tasks = Supervisor()
        tasks.spawn(boom(), "boom")
        for _ in range(10):
            await asyncio.sleep(0)
        return tasks

    with caplog.at_level(logging.ERROR, logger="kachery_p2p.tasks"):
        tasks = asyncio.run(main())
    assert tasks.failures == 1 and len(tasks) == 0
    record = next(r for r in caplog.records if "boom" in r.getMessage())
    assert record.exc_info is not None and "kaboom" in caplog.text and "Traceback" in caplog.text


def test_a_task_that_keeps_the_node_reachable_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def dial() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError("unexpected")
        await asyncio.Event().wait()  # connected: runs until cancelled

    async def main() -> Supervisor:
        tasks = Supervisor(restart_delay=0.0)
        tasks.keep_running(dial, "dial relay")
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(runs) == 3
        tasks.cancel_all()
        await asyncio.sleep(0)
        return tasks

    with caplog.at_level(logging.ERROR, logger="kachery_p2p.tasks"):
        tasks = asyncio.run(main())
    assert tasks.failures == 2 and caplog.text.count("KeyError: ") == 2


def test_keep_running_stops_when_its_subject_is_gone() -> None:
    alive = [True]
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)
        alive[0] = False

    async def main() -> None:
        tasks = Supervisor(restart_delay=0.0)
        task = tasks.keep_running(once, "relay client", lambda: alive[0])
        await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert runs == [1]


def test_lan_addresses_fall_back_without_ifaddr(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ifaddr(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ifaddr":
            raise ImportError("no ifaddr here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ifaddr)
    monkeypatch.setattr(sysnet, "default_route_ipv4", lambda: "192.0.2.7")
    assert sysnet.lan_ipv4_addresses() == ["192.0.2.7"]


def test_lan_addresses_are_usable_unicast_ipv4() -> None:
    for ip in sysnet.lan_ipv4_addresses():
        assert sysnet._usable(ip) and not ip.startswith("127.")
    assert sysnet.route_mtu(("127.0.0.1", 9)) in (None, 65535, 65536)


def test_one_format_address_and_one_hex64_check() -> None:
    from kachery_p2p.ids import format_address, is_hex64
    from kachery_p2p.nat.report import format_address as report_format

    assert format_address(("10.0.0.1", 5)) == "10.0.0.1:5"
    assert format_address(("::ffff:10.0.0.1", 5)) == "10.0.0.1:5"
    assert format_address(("fd00::1", 7)) == "[fd00::1]:7"
    assert report_format(None) is None and report_format(("fd00::1", 7)) == "[fd00::1]:7"
    assert is_hex64("a" * 64) and not is_hex64("A" * 64) and is_hex64("A" * 64, any_case=True)
    assert not is_hex64("a" * 65) and not is_hex64("a" * 63 + "\n") and not is_hex64(None)
