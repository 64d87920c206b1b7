"""kachery_p2p.ids.FileUri: the URI grammar of storage-compat section 2 and 7, edge cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_p2p.errors import InvalidUriError, UsageError
from kachery_p2p.ids import ChunkOf, FileUri, format_store_uri

H = "f572d396fae9206628714fb2ce00f72e94f2258f"
M = "c6444342e8e793db9e6613183d74a50ff0efe84b"
MD5 = "43e6793ad813c9edc7c88a3200eca27d"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (f"sha1://{H}/small.txt", "small.txt"),
        (f"sha1://{H}/some/dir/x.txt", "some/dir/x.txt"),
        (f"sha1://{H}/ü name.txt", "ü name.txt"),
        (f"sha1://{H}/a.b.c", "a.b.c"),
        (f"sha1://{H}/.hidden", ".hidden"),
        (f"sha1://{H}//leading", "/leading"),
        (f"sha1://{H}/", ""),
        (f"sha1://{H}", ""),
    ],
)
def test_names(text: str, name: str) -> None:
    uri = FileUri.parse(text)
    assert (uri.algorithm, uri.hash, uri.name, uri.manifest, uri.is_dir) == ("sha1", H, name, None, False)
    assert uri.sha1 == H


def test_label_after_hash() -> None:
    uri = FileUri.parse(f"sha1://{H}.label/x")
    assert (uri.hash, uri.label, uri.name) == (H, "label", "x")
    assert str(uri) == f"sha1://{H}.label/x"


def test_manifest_query() -> None:
    uri = FileUri.parse(f"sha1://{H}/big.bin?manifest={M}")
    assert (uri.name, uri.manifest) == ("big.bin", M)
    assert str(uri) == f"sha1://{H}/big.bin?manifest={M}"


def test_chunk_of_query() -> None:
    uri = FileUri.parse(f"sha1://{M}?chunkOf={H}~20000000~25000000")
    assert uri.hash == M
    assert uri.chunk_of == ChunkOf(sha1=H, start=20_000_000, end=25_000_000)
    assert FileUri.parse(str(uri)) == uri


@pytest.mark.parametrize(
    "query", [f"chunkOf={H}~5", f"chunkOf={H}~a~5", f"chunkOf={H}~9~5", f"chunkOf={H[:-1]}~0~5", "manifest=xyz"]
)
def test_bad_queries(query: str) -> None:
    with pytest.raises(InvalidUriError):
        FileUri.parse(f"sha1://{H}/x?{query}")


def test_unknown_query_keys_ignored() -> None:
    uri = FileUri.parse(f"sha1://{H}/x?foo=bar&manifest={M}&location=/tmp/y")
    assert (uri.name, uri.manifest, uri.chunk_of) == ("x", M, None)


def test_label_query_of_kachery_cloud() -> None:
    uri = FileUri.parse(f"sha1://{H}?label=my%20file.txt")
    assert uri.name == "my file.txt"


def test_upper_case_hex_and_scheme() -> None:
    uri = FileUri.parse(f"SHA1://{H.upper()}/X.TXT?manifest={M.upper()}")
    assert (uri.algorithm, uri.hash, uri.name, uri.manifest) == ("sha1", H, "X.TXT", M)


def test_question_mark_in_name_is_escaped_on_output() -> None:
    text = format_store_uri(H, "what?.txt", M)
    head, _, query = text.partition("?")
    assert head == f"sha1://{H}/what%3F.txt"
    assert query == f"manifest={M}"
    uri = FileUri.parse(text)
    assert uri.manifest == M
    assert uri.name.replace("%3F", "?") == "what?.txt"


def test_md5() -> None:
    uri = FileUri.parse(f"md5://{MD5.upper()}/mid.bin")
    assert (uri.algorithm, uri.hash, uri.name) == ("md5", MD5, "mid.bin")
    with pytest.raises(UsageError):
        _ = uri.sha1


def test_sha1dir() -> None:
    uri = FileUri.parse(f"sha1dir://{H}.dd/sub/ün.bin")
    assert (uri.algorithm, uri.hash, uri.label, uri.name, uri.is_dir) == ("sha1", H, "dd", "sub/ün.bin", True)
    assert str(uri) == f"sha1dir://{H}.dd/sub/ün.bin"


@pytest.mark.parametrize(
    "text",
    [
        "sha1:////x",
        f"sha1:///{H}",
        f"sha1://{H[:-1]}/x",
        f"sha1://{H}0/x",
        f"sha1://{'g' * 40}/x",
        f"md5://{H}/x",
        f"sha256://{'a' * 64}/x",
        f"feed://{H}",
        f"sha1:{H}",
        f"sha1/{H}",
        H,
        "",
        "/home/user/file.txt",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidUriError):
        FileUri.parse(text)


@pytest.mark.parametrize("value", [None, 42, b"sha1://" + H.encode(), ["sha1://x"]])
def test_non_string(value: object) -> None:
    with pytest.raises(InvalidUriError):
        FileUri.parse(value)  # type: ignore[arg-type]


hex40 = st.text(alphabet="0123456789abcdefABCDEF", min_size=40, max_size=40)
names = st.text(st.characters(blacklist_characters="?\n\r"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(sha1=hex40, name=names, manifest=st.none() | hex40)
def test_store_uri_round_trip(sha1: str, name: str, manifest: str | None) -> None:
    text = format_store_uri(sha1.lower(), name, manifest.lower() if manifest else None)
    uri = FileUri.parse(text)
    assert uri.hash == sha1.lower()
    assert uri.name == name
    assert uri.manifest == (manifest.lower() if manifest else None)
    assert str(uri) == text


def test_line_breaks_in_names_are_escaped_so_the_uri_stays_one_line() -> None:
    text = format_store_uri("a" * 40, "two\nlines\r.txt", None)
    assert "\n" not in text and "\r" not in text
    assert text == "sha1://" + "a" * 40 + "/two%0Alines%0D.txt"
