"""Fixtures for the network-namespace tests: ``lab`` is a fresh NAT lab (see lab.py), removed after each test.

Every test in this directory is marked ``netns`` (``pytest -m 'not netns'`` leaves them out) and is skipped,
with the reason shown in the summary, when this machine cannot build namespaces (not root, no iptables...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import Lab, netns_available

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.netns)


@pytest.fixture
def lab() -> Iterator[Lab]:
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    with Lab() as the_lab:
        yield the_lab
