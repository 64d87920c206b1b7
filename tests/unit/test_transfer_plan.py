"""DownloadPlan (sans-IO): which pieces to fetch, resume from verified chunks, retries, bad providers."""

from __future__ import annotations

import itertools
import random

import pytest

from kachery_p2p.transfer.plan import DEFAULT_PIECE_SIZE, DownloadPlan, Piece

CHUNK = 20_000_000


def chunks_of(size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """The manifest's chunk boundaries for a file of ``size`` bytes (one (0, 0) chunk when empty)."""
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def drain(plan: DownloadPlan) -> list[Piece]:
    pieces = []
    while (piece := plan.next_piece()) is not None:
        pieces.append(piece)
    return pieces


def assert_exact_cover(pieces: list[Piece], chunks: list[tuple[int, int]], indexes: set[int]) -> None:
    """The pieces tile each listed chunk exactly: no gap, no overlap, nothing outside it."""
    for index in indexes:
        start, end = chunks[index]
        mine = sorted((p for p in pieces if p.chunk == index), key=lambda p: p.start)
        assert mine, f"chunk {index} has no piece"
        assert mine[0].start == start and mine[-1].end == end
        for a, b in itertools.pairwise(mine):
            assert a.end == b.start
        for piece in mine:
            assert start <= piece.start <= piece.end <= end
    assert {p.chunk for p in pieces} == indexes


def complete(plan: DownloadPlan, provider: str = "p1") -> list[int]:
    """Receive and verify every queued piece; the chunk indexes that completed, in order."""
    completed = []
    for piece in drain(plan):
        index = plan.piece_received(piece, provider)
        if index is not None:
            completed.append(index)
            plan.chunk_verified(index)
    return completed


@pytest.mark.parametrize(
    ("size", "piece_size"),
    [
        (1, DEFAULT_PIECE_SIZE),
        (DEFAULT_PIECE_SIZE, DEFAULT_PIECE_SIZE),
        (DEFAULT_PIECE_SIZE + 1, DEFAULT_PIECE_SIZE),
        (CHUNK, DEFAULT_PIECE_SIZE),
        (CHUNK + 1, DEFAULT_PIECE_SIZE),
        (3 * CHUNK + 12_345, DEFAULT_PIECE_SIZE),
        (1000, 7),
        (1000, 1000),
        (1000, 1),
    ],
)
def test_pieces_cover_each_chunk_exactly(size: int, piece_size: int) -> None:
    chunks = chunks_of(size) if piece_size == DEFAULT_PIECE_SIZE else chunks_of(size, 300)
    plan = DownloadPlan(chunks, set(), piece_size=piece_size)
    assert plan.total_bytes == size
    assert plan.pending == len(drain(DownloadPlan(chunks, set(), piece_size=piece_size)))
    pieces = drain(plan)
    assert all(0 < p.size <= piece_size for p in pieces)
    assert_exact_cover(pieces, chunks, set(range(len(chunks))))
    assert sum(p.size for p in pieces) == size
    assert plan.next_piece() is None and plan.pending == 0
    assert not plan.finished


def test_a_twenty_megabyte_chunk_is_five_pieces() -> None:
    plan = DownloadPlan([(0, CHUNK)], set())
    pieces = drain(plan)
    assert [p.size for p in pieces] == [DEFAULT_PIECE_SIZE] * 4 + [CHUNK - 4 * DEFAULT_PIECE_SIZE]


def test_full_download_finishes() -> None:
    chunks = chunks_of(2 * CHUNK + 5)
    plan = DownloadPlan(chunks, set())
    assert complete(plan) == [0, 1, 2]
    assert plan.finished
    assert plan.bytes_verified == plan.total_bytes == plan.bytes_loaded == 2 * CHUNK + 5


def test_a_chunk_completes_only_with_its_last_piece_in_any_order() -> None:
    chunks = chunks_of(1000, 300)
    plan = DownloadPlan(chunks, set(), piece_size=100)
    pieces = drain(plan)
    random.Random(4).shuffle(pieces)
    done: list[int] = []
    remaining = {i: sum(1 for p in pieces if p.chunk == i) for i in range(len(chunks))}
    for piece in pieces:
        index = plan.piece_received(piece, "p")
        remaining[piece.chunk] -= 1
        assert (index is not None) == (remaining[piece.chunk] == 0)
        if index is not None:
            assert index == piece.chunk
            done.append(index)
    assert sorted(done) == [0, 1, 2, 3]
    assert not plan.finished  # received is not verified
    for index in done:
        plan.chunk_verified(index)
    assert plan.finished


def test_verified_chunks_are_skipped_on_resume() -> None:
    chunks = chunks_of(4 * CHUNK + 10)
    plan = DownloadPlan(chunks, {0, 2})
    pieces = drain(plan)
    assert_exact_cover(pieces, chunks, {1, 3, 4})
    assert plan.bytes_verified == plan.bytes_resumed == 2 * CHUNK
    assert plan.bytes_loaded == 2 * CHUNK and plan.bytes_received == 0
    for piece in pieces:
        index = plan.piece_received(piece, "p")
        if index is not None:
            plan.chunk_verified(index)
    assert plan.finished
    assert plan.bytes_loaded == plan.total_bytes
    assert plan.bytes_received == 2 * CHUNK + 10


def test_everything_verified_is_finished_at_once() -> None:
    chunks = chunks_of(2 * CHUNK)
    plan = DownloadPlan(chunks, {0, 1})
    assert plan.finished and plan.pending == 0 and plan.next_piece() is None
    assert plan.bytes_loaded == plan.total_bytes


def test_verified_indexes_outside_the_file_are_ignored() -> None:
    plan = DownloadPlan(chunks_of(CHUNK + 1), {5, -1})
    assert plan.bytes_verified == 0
    assert_exact_cover(drain(plan), chunks_of(CHUNK + 1), {0, 1})


def test_piece_failed_requeues_first() -> None:
    plan = DownloadPlan(chunks_of(1000, 500), set(), piece_size=250)
    first, second = plan.next_piece(), plan.next_piece()
    assert first is not None and second is not None
    before = plan.pending
    plan.piece_failed(second)
    plan.piece_failed(first)
    assert plan.pending == before + 2
    assert plan.next_piece() == first and plan.next_piece() == second
    # The retried pieces complete the chunk as usual; the failure is not counted as received.
    assert plan.bytes_received == 0
    assert plan.piece_received(first, "p") is None
    assert plan.piece_received(second, "p") == 0


def test_chunk_failed_requeues_all_its_pieces_and_bans_a_sole_provider() -> None:
    chunks = chunks_of(1000, 500)
    plan = DownloadPlan(chunks, set(), piece_size=200, max_strikes=2)
    pieces = drain(plan)
    chunk0 = [p for p in pieces if p.chunk == 0]
    assert len(chunk0) == 3
    for piece in chunk0:
        assert plan.piece_received(piece, "bad") == (0 if piece is chunk0[-1] else None)
    assert plan.chunk_failed(0) == []  # one strike, two allowed
    assert plan.strikes == {"bad": 1}
    requeued = drain(plan)
    assert [(p.chunk, p.start, p.end) for p in sorted(requeued, key=lambda p: p.start)] == [
        (p.chunk, p.start, p.end) for p in chunk0
    ]
    for piece in requeued:
        plan.piece_received(piece, "bad")
    assert plan.chunk_failed(0) == ["bad"]
    assert plan.banned == {"bad"} and plan.strikes == {"bad": 2}
    assert not plan.finished


def test_a_bad_chunk_from_several_providers_charges_nobody_and_is_refetched_from_one() -> None:
    chunks = chunks_of(1000, 500)
    plan = DownloadPlan(chunks, set(), piece_size=200)
    chunk0 = [p for p in drain(plan) if p.chunk == 0]
    for piece, provider in zip(chunk0, ["good", "bad", "bad"], strict=True):
        plan.piece_received(piece, provider)
    assert plan.chunk_failed(0) == []  # who lied is unknown: nobody is charged yet
    assert plan.strikes == {} and plan.banned == set()
    # The chunk is pinned: whoever takes its first piece gets all of it.
    first = plan.next_piece("bad")
    assert first is not None and first.chunk == 0
    assert plan.next_piece("good") is None  # (chunk 1 was already drained)
    rest = [plan.next_piece("bad"), plan.next_piece("bad")]
    assert all(p is not None and p.chunk == 0 for p in rest)
    for taken in [first, *rest]:
        assert taken is not None
        plan.piece_received(taken, "bad")
    assert plan.chunk_failed(0) == ["bad"]  # now it points at one culprit
    assert plan.banned == {"bad"}
    # The honest provider completes it.
    again = [plan.next_piece("good") for _ in range(3)]
    assert all(p is not None for p in again)
    for retry in again:
        assert retry is not None
        index = plan.piece_received(retry, "good")
    assert index == 0
    plan.chunk_verified(0)
    assert plan.banned == {"bad"} and "good" not in plan.strikes


def test_a_failed_piece_releases_the_pin() -> None:
    plan = DownloadPlan([(0, 400)], set(), piece_size=200)
    a, b = drain(plan)
    plan.piece_received(a, "p1")
    plan.piece_received(b, "p2")
    plan.chunk_failed(0)
    taken = plan.next_piece("p1")
    assert taken is not None and plan.next_piece("p2") is None
    plan.piece_failed(taken)  # p1 went away: the chunk is free for the next taker
    assert plan.next_piece("p2") == taken


def test_a_chunk_pinned_to_a_provider_banned_elsewhere_is_released() -> None:
    plan = DownloadPlan([(0, 10), (10, 20)], set(), piece_size=5)
    a0, b0 = plan.next_piece("honest"), plan.next_piece("liar")  # chunk 0: one piece each
    a1, b1 = plan.next_piece("liar"), plan.next_piece("liar")  # chunk 1: all from the liar
    assert a0 and b0 and a1 and b1 and {a0.chunk, b0.chunk, a1.chunk, b1.chunk} == {0, 1}
    plan.piece_received(a0, "honest")
    assert plan.piece_received(b0, "liar") == 0
    assert plan.chunk_failed(0) == []  # mixed: pinned, nobody charged
    pinned_first = plan.next_piece("liar")  # the liar now owns chunk 0's re-fetch
    assert pinned_first is not None and pinned_first.chunk == 0
    plan.piece_received(a1, "liar")
    assert plan.piece_received(b1, "liar") == 1
    assert plan.chunk_failed(1) == ["liar"]  # chunk 1 was the liar's alone: banned
    plan.piece_received(pinned_first, "liar")  # its in-flight piece still lands
    # The honest provider must be able to fetch everything that is left (the pin is released).
    while (piece := plan.next_piece("honest")) is not None:
        plan.piece_received(piece, "honest")
    assert plan.pending == 0, "pieces left that only the banned provider may take"


def test_default_one_strike_bans_at_once_and_only_once() -> None:
    plan = DownloadPlan(chunks_of(10, 5), set(), piece_size=5)
    pieces = drain(plan)
    plan.piece_received(pieces[0], "liar")
    assert sorted(plan.chunk_failed(0)) == ["liar"]
    (retry,) = drain(plan)
    plan.piece_received(retry, "liar")  # (the caller should not ask a banned provider; still safe)
    assert plan.chunk_failed(0) == []  # already banned: not reported twice
    assert plan.banned == {"liar"} and plan.strikes["liar"] == 2


def test_empty_file_is_one_empty_chunk() -> None:
    plan = DownloadPlan(chunks_of(0), set())
    assert plan.total_bytes == 0 and not plan.finished
    pieces = drain(plan)
    assert pieces == [Piece(0, 0, 0)] and pieces[0].size == 0
    assert plan.piece_received(pieces[0], "p") == 0
    plan.chunk_verified(0)
    assert plan.finished and plan.bytes_loaded == 0


def test_empty_chunk_retry_is_one_piece_again() -> None:
    plan = DownloadPlan([(0, 0)], set())
    (piece,) = drain(plan)
    plan.piece_received(piece, "p")
    plan.chunk_failed(0)
    assert [(p.chunk, p.start, p.end) for p in drain(plan)] == [(0, 0, 0)]


def test_bytes_loaded_accounting() -> None:
    chunks = chunks_of(1000, 400)  # 400 + 400 + 200
    plan = DownloadPlan(chunks, {1}, piece_size=150)
    assert plan.total_bytes == 1000 and plan.bytes_resumed == 400 and plan.bytes_loaded == 400
    pieces = drain(plan)
    loaded = 400
    for piece in pieces:
        plan.piece_received(piece, "p")
        loaded += piece.size
        assert plan.bytes_loaded == loaded
    assert plan.bytes_loaded == 1000
    # A failed chunk's bytes came over the wire, so they stay counted as received: progress may
    # pass the total when data is fetched twice (the downloader clamps what it reports).
    plan.chunk_failed(0)
    for piece in drain(plan):
        plan.piece_received(piece, "q")
    assert plan.bytes_received == 600 + 400
    assert plan.bytes_loaded == 1400 > plan.total_bytes
    plan.chunk_verified(0)
    plan.chunk_verified(2)
    assert plan.finished and plan.bytes_verified == 1000
    plan.chunk_verified(2)  # verifying twice counts once
    assert plan.bytes_verified == 1000


def test_piece_size_must_be_positive() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            DownloadPlan([(0, 10)], set(), piece_size=bad)


def test_random_schedules_always_cover_the_file() -> None:
    """Random interleavings of success, piece failure and bad chunks still end with every byte verified."""
    for seed in range(30):
        rng = random.Random(seed)
        size = rng.randrange(0, 5000)
        chunks = chunks_of(size, rng.randrange(1, 1200))
        plan = DownloadPlan(chunks, set(), piece_size=rng.randrange(1, 700), max_strikes=1000)
        received: dict[int, set[tuple[int, int]]] = {i: set() for i in range(len(chunks))}
        steps = 0
        while not plan.finished:
            steps += 1
            assert steps < 100_000
            providers = ["p0", "p1", "p2"]
            rng.shuffle(providers)
            taken = [(p, plan.next_piece(p)) for p in providers[:1]]
            if taken[0][1] is None:  # maybe pinned to another provider
                taken = [(p, plan.next_piece(p)) for p in providers[1:]]
            got = [(p, piece) for p, piece in taken if piece is not None]
            assert got, "work left but no provider may take any of it"
            for _provider, extra in got[1:]:
                plan.piece_failed(extra)
            provider, piece = got[0]
            if rng.random() < 0.2:
                plan.piece_failed(piece)
                continue
            received[piece.chunk].add((piece.start, piece.end))
            index = plan.piece_received(piece, provider)
            if index is None:
                continue
            start, end = chunks[index]
            covered = sorted(received[index])
            if end > start:
                assert covered[0][0] == start and covered[-1][1] == end
                assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
            if rng.random() < 0.2:
                received[index].clear()
                plan.chunk_failed(index)
            else:
                plan.chunk_verified(index)
        assert plan.bytes_verified == size and plan.pending == 0


def test_endgame_second_copy_of_the_last_pieces() -> None:
    plan = DownloadPlan([(0, 10)], set(), piece_size=5)
    assert plan.endgame_piece("y") is None  # pieces are still queued: no endgame yet
    p0, p1 = plan.next_piece("x"), plan.next_piece("x")
    assert p0 is not None and p1 is not None and plan.in_flight == 2
    copy = plan.endgame_piece("y")
    assert copy in (p0, p1)
    assert plan.endgame_piece("x") is None  # never a second copy for the same provider
    assert copy is not None
    assert plan.piece_received(copy, "y") is None and not plan.is_open(copy)
    other = p1 if copy == p0 else p0
    assert plan.piece_received(other, "x") == 0
    # The slow first copy arrives late: not counted twice.
    assert plan.piece_received(copy, "x") is None
    assert plan.bytes_received == 10
    # A failure of one fetcher does not requeue a piece another provider is still fetching.
    plan2 = DownloadPlan([(0, 5)], set(), piece_size=5)
    piece = plan2.next_piece("x")
    assert piece is not None and plan2.endgame_piece("y") == piece
    plan2.piece_failed(piece, "x")
    assert plan2.pending == 0 and plan2.is_open(piece)
    plan2.piece_failed(piece, "y")
    assert plan2.pending == 1 and not plan2.is_open(piece)


def test_a_stale_endgame_copy_is_not_taken_for_the_refetch() -> None:
    plan = DownloadPlan([(0, 10)], set(), piece_size=5)
    p0, p1 = plan.next_piece("x"), plan.next_piece("x")
    stale = plan.endgame_piece("y")  # y is asked for a second copy of one of x's pieces
    assert p0 is not None and p1 is not None and stale is not None
    plan.piece_received(p0, "x")
    assert plan.piece_received(p1, "x") == 0
    assert plan.chunk_failed(0) == ["x"]  # x sent all of it: banned; the chunk is pinned for the re-fetch
    refetch = plan.next_piece("z")
    assert refetch is not None
    assert (refetch.chunk, refetch.start, refetch.end) == (stale.chunk, stale.start, stale.end)  # now z's
    # y's copy, requested for the earlier attempt, arrives now: it must not count as z's re-fetch.
    before = plan.bytes_received
    plan.piece_received(stale, "y")
    assert plan.bytes_received == before, "the stale copy was counted"
    assert plan.is_open(refetch), "z's re-fetch was closed by y's stale copy"


def test_bytes_already_here_become_the_first_piece_and_the_rest_is_fetched_after_them() -> None:
    plan = DownloadPlan([(0, 1000), (1000, 2000)], set(), piece_size=300)
    head = plan.take_front(120, "a")
    assert head == Piece(0, 0, 120)
    assert plan.piece_received(head, "a") is None  # the chunk still misses bytes
    pieces = []
    while (piece := plan.next_piece("b")) is not None:
        pieces.append(piece)
    assert pieces[0].start == 120 and [(p.start, p.end) for p in pieces][:4] == [(120, 420), (420, 720), (720, 1000),
                                                                                    (1000, 1300)]
    for piece in pieces:
        plan.piece_received(piece, "b")
    assert plan.bytes_received == 2000
    assert plan.piece_sources(0) == {(0, 120): "a", (120, 420): "b", (420, 720): "b", (720, 1000): "b"}


def test_bytes_already_here_are_cut_to_the_first_chunk_and_refused_once_it_is_not_whole_to_fetch() -> None:
    plan = DownloadPlan([(0, 100), (100, 300)], set())
    head = plan.take_front(250, "a")
    assert head == Piece(0, 0, 100)
    assert plan.piece_received(head, "a") == 0  # the whole first chunk: verify it now
    assert plan.take_front(50, "a") is None  # its first chunk is out already
    assert DownloadPlan([(0, 100), (100, 300)], {0}).take_front(50, "a") is None  # verified (resumed)
    assert DownloadPlan([(0, 100)], set()).take_front(0, "a") is None
    failed = DownloadPlan([(0, 100), (100, 300)], set())
    first = failed.next_piece("a")
    assert first is not None and failed.piece_received(first, "a") == 0
    failed.chunk_failed(0)  # pinned now: fetched again from one provider, not from bytes in hand
    assert failed.take_front(50, "b") is None
