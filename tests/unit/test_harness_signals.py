"""The test harness itself: commands the tests start can be interrupted, however the suite was started."""

from __future__ import annotations

import subprocess
import sys


def test_commands_started_by_the_tests_do_not_inherit_an_ignored_sigint() -> None:
    """Fails (before conftest resets it) when pytest runs with SIGINT ignored, as in ``make test &`` from a
    script: then every Ctrl-C test sees its command ignore the key."""
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "False"
