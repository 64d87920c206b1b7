"""Hypothesis fuzzing of every decoder of network bytes (bounded for ``make test``; ``make fuzz`` runs
the long mutation loop in run.py). A decoder may only refuse bad input with its documented errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from targets import TARGETS, Target, check

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutated(target: Target) -> st.SearchStrategy[bytes]:
    """A seed with bytes flipped, inserted, cut or spliced; or plain random bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(target.seeds)))
        for _ in range(draw(st.integers(0, 8))):
            op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(max_size=16))
            elif op == "delete" and data:
                del data[pos : pos + draw(st.integers(1, 16))]
            elif op == "truncate":
                del data[pos:]
            elif op == "splice":
                data[pos:pos] = draw(st.sampled_from(target.seeds))[: draw(st.integers(0, 64))]
        return bytes(data)

    return st.one_of(build(), st.binary(max_size=2048))


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_decoder_refuses_garbage_with_its_own_errors_only(target: Target) -> None:
    @FUZZ
    @given(_mutated(target))
    def fuzz(data: bytes) -> None:
        error = check(target, data)
        assert error is None, f"{target.name} raised {error!r} on {data[:80]!r}"

    fuzz()


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_seeds_decode(target: Target) -> None:
    for seed in target.seeds:
        assert check(target, seed) is None
