"""The transfer registry's bookkeeping (sans-IO, given ``now``) and the dashboard's login sessions."""

from __future__ import annotations

import logging

import pytest

from kachery_p2p.daemon.activity import UPLOAD_IDLE, Activity
from kachery_p2p.daemon.control_ui import LOGIN_TTL, Sessions, is_dashboard_path

PEER = "ab" * 32
SHA1 = "12" * 20


def test_download_rate_eta_and_finish_line(caplog: pytest.LogCaptureFixture) -> None:
    activity = Activity()
    entry = activity.download_started(f"sha1://{SHA1}/f", SHA1, 10_000_000, [PEER], now=0.0, task=None)
    assert activity.snapshot(0.0)["downloads"][0]["state"] == "waiting"
    activity.download_progress(entry, {"bytesLoaded": 2_000_000, "paths": ["relayed"]}, now=1.0)
    activity.download_progress(entry, {"bytesLoaded": 4_000_000}, now=2.0)
    info = activity.snapshot(2.0)["downloads"][0]
    assert info["rate"] == pytest.approx(2_000_000) and info["etaSec"] == pytest.approx(3.0)
    assert info["paths"] == ["relayed"] and info["state"] == "downloading"
    assert not activity.cancel(SHA1)  # no task to cancel
    with caplog.at_level(logging.INFO, logger="kachery_p2p.transfers"):
        activity.download_finished(entry, "done", now=4.0)
    assert activity.snapshot(4.0)["downloads"] == []
    assert activity.recent[0]["state"] == "done" and activity.recent[0]["rate"] == pytest.approx(2.5e6)
    assert "10000000 bytes in 4.00 s (2.50 MB/s) from 1 provider (relayed)" in caplog.text


def test_uploads_are_counted_per_peer_and_file_and_retired_when_idle(caplog: pytest.LogCaptureFixture) -> None:
    activity = Activity()
    assert activity.served(PEER, "a", "direct", SHA1, 3000, 1000, now=0.0)
    assert not activity.served(PEER, "a", "direct", SHA1, 3000, 2000, now=1.0)
    upload = activity.snapshot(1.0)["uploads"][0]
    assert upload["bytes"] == 3000 and upload["peer"] == PEER and upload["path"] == "direct"
    assert activity.retire_idle_uploads(1.5) == pytest.approx(UPLOAD_IDLE - 0.5)
    with caplog.at_level(logging.INFO, logger="kachery_p2p.transfers"):
        assert activity.retire_idle_uploads(1.0 + UPLOAD_IDLE) is None
    assert activity.snapshot(10.0)["uploads"] == []
    assert f"served sha1://{SHA1} to {PEER[:12]}" in caplog.text and "3000 bytes" in caplog.text


def test_login_links_work_once_and_expire() -> None:
    sessions = Sessions()
    token = sessions.new_login(now=0.0)
    session = sessions.redeem(token, now=1.0)
    assert session is not None and sessions.valid(session, now=2.0)
    assert sessions.redeem(token, now=1.0) is None  # used up
    late = sessions.new_login(now=0.0)
    assert sessions.redeem(late, now=LOGIN_TTL + 1) is None  # expired
    assert not sessions.valid("forged", now=2.0) and not sessions.valid(None, now=2.0)


def test_dashboard_paths() -> None:
    assert is_dashboard_path("/ui") and is_dashboard_path("/ui/api/state")
    assert not is_dashboard_path("/uix") and not is_dashboard_path("/node-info")
