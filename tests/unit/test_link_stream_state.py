"""A stream the peer stopped reading counts as reset for the sender (daemon/link.py's stream_send_reset),
also once aioquic has discarded its state: the reset was acknowledged and the peer's side had ended.

Before, only a stream still in aioquic's table counted, so a body still being served on a stream whose
state was gone hit aioquic's ValueError ("Cannot send data on a finished stream"), which the serving
session logged as an internal error with a traceback (seen in CI after every receiver's steal or
endgame stop). Two connections in memory on a simulated clock, no loss."""

from __future__ import annotations

from test_quic_fastpath import LossyPair

from kachery_p2p.daemon.link import stream_send_reset
from kachery_p2p.quic.flow import KacheryQuicConnection


def test_a_stopped_stream_stays_reset_after_its_state_is_discarded() -> None:
    pair = LossyPair(KacheryQuicConnection, KacheryQuicConnection, loss=0.0, jitter=0.0, duplicate=0.0)
    pair.run_until(pair.connected, deadline=5.0)
    server = pair.server
    assert server is not None
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, b"a request", end_stream=True)
    pair.run_until(lambda: stream_id in pair.finished["server"], deadline=6.0)
    server.send_stream_data(stream_id, b"x" * 4000)
    pair.run_until(lambda: len(pair.received["client"].get(stream_id, b"")) == 4000, deadline=7.0)
    assert not stream_send_reset(server, stream_id)  # a stream in use
    fresh = server.get_next_available_stream_id()
    assert not stream_send_reset(server, fresh)  # a stream not opened yet

    pair.client.stop_stream(stream_id, 1)  # the receiver no longer wants the reply
    pair.run_until(lambda: stream_send_reset(server, stream_id), deadline=8.0)
    pair.run_until(lambda: stream_id not in server._streams, deadline=10.0)  # reset acknowledged: discarded
    assert stream_send_reset(server, stream_id), "a discarded stream no longer counted as reset"
