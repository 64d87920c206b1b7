"""kachery_p2p.store.manifest: byte-exact manifests, strict parsing, incremental building."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_p2p.errors import UsageError, VerificationError
from kachery_p2p.store import Manifest, ManifestBuilder, ManifestChunk

PATTERN = bytes(range(256)) * 4096  # 1 MiB of deterministic content
H1 = "1" * 40
H2 = "2" * 40
H3 = "3" * 40
HF = "f" * 40


def pattern_blocks(size: int) -> Iterator[bytes]:
    """``size`` bytes of PATTERN repeated, in 1 MiB blocks."""
    left = size
    while left > 0:
        block = PATTERN[: min(left, len(PATTERN))]
        left -= len(block)
        yield block


def pattern_hashes(size: int, boundary: int) -> tuple[str, str, str]:
    """sha1 of the whole pattern file and of its parts [0, boundary) and [boundary, size)."""
    whole, first, second = hashlib.sha1(), hashlib.sha1(), hashlib.sha1()
    pos = 0
    for block in pattern_blocks(size):
        whole.update(block)
        cut = max(0, min(len(block), boundary - pos))
        first.update(block[:cut])
        second.update(block[cut:])
        pos += len(block)
    return whole.hexdigest(), first.hexdigest(), second.hexdigest()


def build(size: int) -> tuple[str, Manifest | None]:
    builder = ManifestBuilder()
    for block in pattern_blocks(size):
        builder.update(block)
    assert builder.size == size
    return builder.finish()


def test_manifest_bytes_for_20_000_001_bytes() -> None:
    whole, c0, c1 = pattern_hashes(20_000_001, 20_000_000)
    expected = (
        f'{{"size":20000001,"sha1":"{whole}","chunks":['
        f'{{"start":0,"end":20000000,"sha1":"{c0}"}},'
        f'{{"start":20000000,"end":20000001,"sha1":"{c1}"}}]}}'
    ).encode()
    sha1, manifest = build(20_000_001)
    assert sha1 == whole
    assert manifest is not None
    assert manifest.to_json_bytes() == expected
    assert manifest.sha1_of_json() == hashlib.sha1(expected).hexdigest()
    # Same bytes as kachery-p2p's Python writer (json.dumps compact).
    assert expected == json.dumps(
        {"size": 20000001, "sha1": whole, "chunks": [
            {"start": 0, "end": 20000000, "sha1": c0}, {"start": 20000000, "end": 20000001, "sha1": c1}]},
        separators=(",", ":"),
    ).encode()
    assert Manifest.parse(expected, expected_sha1=whole) == manifest


def test_no_manifest_for_exactly_20_000_000_bytes() -> None:
    whole, _, _ = pattern_hashes(20_000_000, 20_000_000)
    assert build(20_000_000) == (whole, None)


def test_empty_and_small_inputs_have_no_manifest() -> None:
    assert ManifestBuilder().finish() == (hashlib.sha1(b"").hexdigest(), None)
    builder = ManifestBuilder()
    builder.update(b"abc")
    builder.update(memoryview(b"def"))
    assert builder.finish() == (hashlib.sha1(b"abcdef").hexdigest(), None)


def naive(data: bytes, chunk_size: int) -> tuple[str, Manifest | None]:
    sha1 = hashlib.sha1(data).hexdigest()
    if len(data) <= chunk_size:
        return sha1, None
    chunks = tuple(
        ManifestChunk(i, min(i + chunk_size, len(data)), hashlib.sha1(data[i : i + chunk_size]).hexdigest())
        for i in range(0, len(data), chunk_size)
    )
    return sha1, Manifest(size=len(data), sha1=sha1, chunks=chunks)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(max_size=40), max_size=12), chunk_size=st.integers(1, 30))
def test_builder_matches_naive_for_any_split(pieces: list[bytes], chunk_size: int) -> None:
    builder = ManifestBuilder(chunk_size=chunk_size)
    for piece in pieces:
        builder.update(piece)
    assert builder.finish() == naive(b"".join(pieces), chunk_size)


def test_builder_refuses_update_after_finish() -> None:
    builder = ManifestBuilder()
    builder.finish()
    with pytest.raises(UsageError):
        builder.update(b"x")


def spaced_067_manifest() -> bytes:
    """What kachery 0.6.7 writes for a 25 MB file: default separators, 10 MB chunks."""
    return json.dumps({
        "size": 25000000,
        "sha1": HF.upper(),
        "chunks": [
            {"start": 0, "end": 10000000, "sha1": H1},
            {"start": 10000000, "end": 20000000, "sha1": H2},
            {"start": 20000000, "end": 25000000, "sha1": H3},
        ],
    }).encode()


def test_parse_kachery_067_manifest() -> None:
    data = spaced_067_manifest()
    assert b'"size": 25000000, "sha1": ' in data
    manifest = Manifest.parse(data, expected_sha1=HF, expected_manifest_sha1=hashlib.sha1(data).hexdigest())
    assert manifest.size == 25_000_000
    assert manifest.sha1 == HF  # lower-cased
    assert [(c.start, c.end, c.sha1) for c in manifest.chunks] == [
        (0, 10_000_000, H1), (10_000_000, 20_000_000, H2), (20_000_000, 25_000_000, H3)]
    assert manifest.chunks[2].size == 5_000_000
    # Re-serialised compactly it is a different (kachery-p2p style) blob with the same meaning.
    assert manifest.to_json_bytes() != data
    assert Manifest.parse(manifest.to_json_bytes()) == manifest


def test_chunk_lookup() -> None:
    manifest = Manifest.parse(spaced_067_manifest())
    assert manifest.chunk_index_for(0) == 0
    assert manifest.chunk_index_for(9_999_999) == 0
    assert manifest.chunk_index_for(10_000_000) == 1
    assert manifest.chunk_index_for(24_999_999) == 2
    with pytest.raises(UsageError):
        manifest.chunk_index_for(25_000_000)
    with pytest.raises(UsageError):
        manifest.chunk_index_for(-1)
    assert manifest.chunks_covering(0, 1) == [0]
    assert manifest.chunks_covering(9_999_999, 10_000_001) == [0, 1]
    assert manifest.chunks_covering(0, 10_000_000) == [0]
    assert manifest.chunks_covering(5, 99_000_000) == [0, 1, 2]  # end clamped to the size
    assert manifest.chunks_covering(7, 7) == []
    assert manifest.chunks_covering(25_000_000, 30_000_000) == []
    with pytest.raises(UsageError):
        manifest.chunks_covering(-1, 5)
    with pytest.raises(UsageError):
        manifest.chunks_covering(6, 5)


def test_parse_empty_file_manifest() -> None:
    empty = hashlib.sha1(b"").hexdigest()
    one = Manifest.parse(f'{{"size":0,"sha1":"{empty}","chunks":[{{"start":0,"end":0,"sha1":"{empty}"}}]}}'.encode())
    assert len(one.chunks) == 1
    none = Manifest.parse(f'{{"size":0,"sha1":"{empty}","chunks":[]}}'.encode())
    assert none.chunks == ()
    assert none.chunks_covering(0, 10) == []


def good() -> dict[str, object]:
    return {"size": 30, "sha1": HF, "chunks": [
        {"start": 0, "end": 10, "sha1": H1}, {"start": 10, "end": 30, "sha1": H2}]}


def with_chunk(index: int, **changes: object) -> dict[str, object]:
    obj = good()
    chunks = obj["chunks"]
    assert isinstance(chunks, list)
    chunks[index].update(changes)
    return obj


BAD_MANIFESTS: list[tuple[str, object]] = [
    ("gap", with_chunk(1, start=11)),
    ("overlap", with_chunk(1, start=9)),
    ("not starting at 0", with_chunk(0, start=1)),
    ("short of size", {**good(), "size": 31}),
    ("beyond size", {**good(), "size": 29}),
    ("empty chunk", {"size": 30, "sha1": HF, "chunks": [
        {"start": 0, "end": 0, "sha1": H1}, {"start": 0, "end": 30, "sha1": H2}]}),
    ("reversed chunk", with_chunk(1, end=5)),
    ("negative size", {**good(), "size": -30}),
    ("negative start", with_chunk(0, start=-1)),
    ("float size", {**good(), "size": 30.0}),
    ("bool end", with_chunk(1, end=True)),
    ("string size", {**good(), "size": "30"}),
    ("short sha1", {**good(), "sha1": HF[:-1]}),
    ("non-hex sha1", {**good(), "sha1": "g" * 40}),
    ("non-hex chunk sha1", with_chunk(0, sha1="z" * 40)),
    ("missing chunk sha1", {"size": 30, "sha1": HF, "chunks": [{"start": 0, "end": 30}]}),
    ("chunks not a list", {**good(), "chunks": {"0": {"start": 0, "end": 30, "sha1": H1}}}),
    ("chunk not an object", {**good(), "chunks": [[0, 30, H1]]}),
    ("no chunks", {"size": 30, "sha1": HF}),
    ("not an object", [30, HF]),
    ("huge size", {"size": 2**60, "sha1": HF, "chunks": [{"start": 0, "end": 2**60, "sha1": H1}]}),
]


@pytest.mark.parametrize(("why", "obj"), BAD_MANIFESTS, ids=[why for why, _ in BAD_MANIFESTS])
def test_parse_rejects(why: str, obj: object) -> None:
    with pytest.raises(VerificationError) as info:
        Manifest.parse(json.dumps(obj).encode())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"null", b'{"size": NaN}'])
def test_parse_rejects_non_json(data: bytes) -> None:
    with pytest.raises(VerificationError):
        Manifest.parse(data)


def test_parse_checks_expected_hashes() -> None:
    data = json.dumps(good()).encode()
    assert Manifest.parse(data, expected_sha1=HF.upper()).sha1 == HF
    with pytest.raises(VerificationError, match="expected"):
        Manifest.parse(data, expected_sha1=H1)
    with pytest.raises(VerificationError, match="hashes to"):
        Manifest.parse(data, expected_manifest_sha1=H1)


def test_parse_ignores_unknown_keys() -> None:
    obj = good()
    obj["comment"] = "x"
    assert Manifest.parse(json.dumps(obj).encode()) == Manifest.parse(json.dumps(good()).encode())
