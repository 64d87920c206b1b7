"""The dashboard in a real headless browser (Debian's chromium driven by Selenium through chromedriver).

Two real daemons joined through a rate-limited relay (see test_transfers_cli.slow_pair) so a download is
still running while the page is looked at. Checked as a user sees it: the login link opens the page (and
leaves neither the secret in the address bar nor a cookie readable by scripts), the peer and the download
in progress are shown with the progress moving, Cancel on the page stops the download, and requests from
another origin or Host are refused. A screenshot is saved in ``$KACHERY_P2P_ARTIFACTS`` (default
``test-artifacts/``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import http_request
from helpers import wait_until
from test_transfers_cli import SIZE, slow_pair

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("KACHERY_P2P_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1100")

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="kp2p-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _attr(driver: Any, css: str, name: str) -> str | None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        value = driver.find_element("css selector", css).get_attribute(name)
    except (NoSuchElementException, StaleElementReferenceException):
        return None
    return None if value is None else str(value)


def _click(driver: Any, css: str) -> None:
    """Click an element; the page re-renders every second, so a stale element is looked up again."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            driver.find_element("css selector", css).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_until(clicked, 10.0, f"a click on {css}", 0.05)


def test_dashboard_in_a_browser(daemon_factory: Any, tmp_path: Path, browser: Any) -> None:
    a, b, channel, relay = slow_pair(daemon_factory)
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(SIZE))
    uri = a.run("store", str(source), check=True).stdout.strip()
    sha1 = uri.split("//")[1].split("/")[0]

    link = b.run("ui", "--no-browser")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    token = url.split("t=", 1)[1]
    assert url.startswith(f"http://127.0.0.1:{b.api_port}/ui/login?t=")

    browser.get(url)
    wait_until(lambda: _text(browser, "#node-id") == b.node_id, 20.0, "the page to show the node id", 0.2)
    assert browser.current_url == f"http://127.0.0.1:{b.api_port}/ui/"  # the secret left the address bar
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert token not in browser.page_source
    cookie = browser.get_cookie("kp2p_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    wait_until(lambda: _text(browser, f'tr[data-node-id="{a.node_id}"]'), 20.0, "peer a in the peers table", 0.2)
    assert "relayed" in _text(browser, f'tr[data-node-id="{a.node_id}"]')
    assert channel in _text(browser, "#channel-list")
    assert _text(browser, "#conn-status") == "live"

    load = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "kachery-p2p-load"), uri],
        env=b.env, cwd=b.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        row = f'tr[data-direction="download"][data-sha1="{sha1}"]'

        def shown_bytes() -> int:
            value = _attr(browser, row, "data-bytes")
            return int(value) if value else 0

        first = wait_until(shown_bytes, 30.0, "the download on the page", 0.2)
        wait_until(lambda: shown_bytes() > first + 1_000_000, 30.0, "the progress bar to move", 0.2)
        shown = _text(browser, row)
        assert "MB/s" in shown and "%" in shown and a.node_id[:12] in shown and "relayed" in shown, shown
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")

        _click(browser, f"{row} button.cancel")
        _out, err = load.communicate(timeout=20)
        assert load.returncode != 0 and "cancelled" in err, err
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    wait_until(lambda: not _text(browser, row), 10.0, "the download to leave the table", 0.2)
    wait_until(lambda: _attr(browser, f'tr[data-recent="{sha1}"]', "data-state") == "cancelled", 10.0,
               "the cancelled download among the recent ones", 0.2)
    snapshot = json.loads(b.run("transfers", "--json", check=True).stdout)
    assert snapshot["downloads"] == []

    # Leave and join from the page.
    _click(browser, f'li[data-channel="{channel}"] button.leave')
    wait_until(lambda: channel not in b.run("get-channels").stdout, 10.0, "leaving from the page", 0.2)
    browser.find_element("css selector", "#join-name").send_keys(channel)
    _click(browser, "#join-form button")
    wait_until(lambda: channel in b.run("get-channels").stdout, 10.0, "joining from the page", 0.2)

    # Requests that do not come from the dashboard's own origin are refused, even with its cookie.
    jar = {"Cookie": f"kp2p_session={cookie['value']}", "Content-Type": "application/json"}
    host = f"127.0.0.1:{b.api_port}"
    body = json.dumps({"uri": uri}).encode()
    own = http_request(b.api_port, "POST", "/ui/api/cancel", body, {**jar, "Origin": f"http://{host}"})
    assert own[0] == 200, own
    for headers in (
        {**jar, "Origin": "http://evil.example"},
        {**jar, "Origin": f"http://{host}", "Sec-Fetch-Site": "cross-site"},
        {**jar, "Host": f"evil.example:{b.api_port}", "Origin": f"http://evil.example:{b.api_port}"},
        {**jar},  # a POST without an Origin
    ):
        status, _ = http_request(b.api_port, "POST", "/ui/api/cancel", body, headers)
        assert status == 403, (headers, status)
    assert http_request(b.api_port, "GET", "/ui/api/state", None, {"Host": f"rebind.example:{b.api_port}",
                        "Cookie": jar["Cookie"]})[0] == 403
    assert http_request(b.api_port, "GET", "/ui/api/state", None, {"Cookie": jar["Cookie"]})[0] == 200
    assert http_request(b.api_port, "GET", "/ui/api/state")[0] == 401  # no cookie
    assert http_request(b.api_port, "GET", f"/ui/login?t={token}")[0] == 403  # the link works once

    # The relay's own dashboard shows its counters.
    relay_link = relay.run("ui", "--no-browser")
    assert relay_link.returncode == 0, relay_link.stderr
    browser.get(relay_link.stdout.strip())
    wait_until(lambda: "forwarded_bytes" in _text(browser, "#relay"), 20.0, "the relay counters", 0.2)
    assert "this node is a relay" in _text(browser, "#node-relays")
