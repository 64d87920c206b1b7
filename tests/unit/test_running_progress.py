"""Progress of a running download as a client hears it (daemon/running.py), in memory.

The line that says providers were found (phase queued/downloading, with bytesTotal) is what a client
times the start of the transfer by: it must go out when the phase changes, not at the next progress
tick. The ticks are set to a minute here, so a follower that only speaks on ticks fails the test.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kachery_p2p.daemon import running
from kachery_p2p.daemon.running import DownloadRegistry, RunningDownload
from kachery_p2p.ids import FileUri

URI = FileUri.parse("sha1://" + "ab" * 20)


@pytest.fixture(autouse=True)
def slow_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(running, "PROGRESS_INTERVAL", 60.0)
    monkeypatch.setattr(running, "HEARTBEAT_INTERVAL", 60.0)


def test_each_phase_reaches_the_follower_before_the_download_goes_on() -> None:
    async def main() -> list[str]:
        registry = DownloadRegistry()
        heard: list[dict[str, Any]] = []
        changed = asyncio.Event()

        async def progress(message: dict[str, Any]) -> None:
            heard.append(message)
            changed.set()

        async def until_heard(phase: str) -> None:
            # The download does not go on until the client heard the phase: with a follower that
            # speaks only on its (one-minute) ticks this times out.
            while not any(m.get("phase") == phase for m in heard):
                changed.clear()
                await asyncio.wait_for(changed.wait(), 5.0)

        async def run(entry: RunningDownload) -> str:
            await until_heard("searching")
            entry.phase = "queued"
            await until_heard("queued")
            entry.phase = "downloading"
            await until_heard("downloading")
            return "the file"

        entry = registry.start(URI, "load", run)
        result = await asyncio.wait_for(registry.follow(entry, progress), 20.0)
        assert result == "the file"
        return [m["phase"] for m in heard]

    phases = asyncio.run(main())
    assert phases[:3] == ["searching", "queued", "downloading"]


def test_every_follower_hears_a_phase_change() -> None:
    async def main() -> tuple[list[str], list[str]]:
        registry = DownloadRegistry()
        heard: tuple[list[str], list[str]] = ([], [])
        go = asyncio.Event()

        def listener(sink: list[str]) -> running.Progress:
            async def progress(message: dict[str, Any]) -> None:
                sink.append(message["phase"])
            return progress

        async def run(entry: RunningDownload) -> str:
            await go.wait()
            entry.phase = "downloading"
            while not all("downloading" in sink for sink in heard):
                await asyncio.sleep(0.01)
            return "done"

        entry = registry.start(URI, "load", run)
        followers = [asyncio.ensure_future(registry.follow(entry, listener(sink))) for sink in heard]
        while not all(heard):
            await asyncio.sleep(0.01)
        go.set()
        await asyncio.wait_for(asyncio.gather(*followers), 10.0)
        return heard

    first, second = asyncio.run(main())
    assert "downloading" in first and "downloading" in second
