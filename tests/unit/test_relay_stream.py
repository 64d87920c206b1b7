"""Datagrams framed over a byte stream (the relay's TCP transport): any split of the stream gives back the
same datagrams; malformed lengths are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_p2p.relay.stream import MAX_DATAGRAM, Deframer, encode_frame


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=2000), max_size=20), st.data())
def test_any_split_of_the_stream_gives_back_the_datagrams(datagrams: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(d) for d in datagrams)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    deframer, out, last = Deframer(), [], 0
    for cut in [*cuts, len(stream)]:
        out += deframer.feed(stream[last:cut])
        last = cut
    assert out == datagrams


def test_zero_and_oversized_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        Deframer().feed(b"\x00\x00")
    with pytest.raises(ValueError):
        Deframer().feed((MAX_DATAGRAM + 1).to_bytes(2, "big"))
    with pytest.raises(ValueError):
        encode_frame(b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_either_parses_or_raises_value_error(garbage: bytes) -> None:
    try:
        for datagram in Deframer().feed(garbage):
            assert 0 < len(datagram) <= MAX_DATAGRAM
    except ValueError:
        pass
