"""Issue 10 #12: the channel count is bounded, so the authentication message always fits its frame."""

from __future__ import annotations

from pathlib import Path

import pytest

from kachery_p2p.channels.membership import MAX_CHANNELS, JoinedChannels
from kachery_p2p.errors import UsageError
from kachery_p2p.quic.auth import make_auth
from kachery_p2p.quic.frames import encode_frame
from kachery_p2p.quic.identity import NodeIdentity


def test_joining_past_the_bound_is_one_clear_error(tmp_path: Path) -> None:
    channels = JoinedChannels(tmp_path / "channels.json")
    names = [f"https://example.org/lab/channel-{i:04d}" for i in range(MAX_CHANNELS)]
    for name in names:
        assert channels.join(name)
    with pytest.raises(UsageError, match=f"at most {MAX_CHANNELS} channels"):
        channels.join("one-too-many")
    assert channels.join(names[0]) is False  # already joined: still fine
    identity = NodeIdentity.from_private_bytes(bytes(32))
    auth = make_auth(identity, "b" * 64, "n" * 32, "x" * 64, channels.names())
    encode_frame(auth)  # raises ValueError above the frame limit
