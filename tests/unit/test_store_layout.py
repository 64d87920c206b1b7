"""kachery_p2p.store.layout: content paths and the content/not-content rule (storage-compat 1.2, 7)."""

from __future__ import annotations

import pytest

from kachery_p2p.errors import UsageError
from kachery_p2p.store import CHUNK_SIZE, content_relpath, is_content_relpath
from kachery_p2p.store.layout import sha1_of_content_relpath

H = "f572d396fae9206628714fb2ce00f72e94f2258f"
EMPTY = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def test_chunk_size_is_kachery_p2p_value() -> None:
    assert CHUNK_SIZE == 20_000_000


def test_content_relpath_three_levels() -> None:
    assert content_relpath(H) == f"sha1/f5/72/d3/{H}"
    assert content_relpath(EMPTY) == f"sha1/da/39/a3/{EMPTY}"


def test_content_relpath_lowercases() -> None:
    assert content_relpath(H.upper()) == f"sha1/f5/72/d3/{H}"


def test_content_relpath_md5() -> None:
    h = "43e6793ad813c9edc7c88a3200eca27d"
    assert content_relpath(h, "md5") == f"md5/43/e6/79/{h}"


@pytest.mark.parametrize(
    "bad",
    ["", H[:-1], H + "0", "g" * 40, "../" + H[3:], H[:39] + "\n", " " + H[1:], "/" * 40],
)
def test_content_relpath_rejects_bad_hash(bad: str) -> None:
    with pytest.raises(UsageError):
        content_relpath(bad)


def test_content_relpath_rejects_unknown_algorithm() -> None:
    with pytest.raises(UsageError):
        content_relpath(H, "sha256")
    with pytest.raises(UsageError):
        content_relpath(H, "md5")  # 40 digits is not an md5


def test_content_relpath_is_content() -> None:
    assert is_content_relpath(content_relpath(H))
    assert is_content_relpath(content_relpath(EMPTY))
    assert sha1_of_content_relpath(content_relpath(H)) == H


C = "aa5253a7d3c2f0d0b1e3f1e5f1b0c4d2e1596bb3"  # a random-looking record/block-cache name


@pytest.mark.parametrize(
    "relpath",
    [
        f"sha1/f5/72/d3/{H}.hints.json",
        f"sha1/f5/72/d3/{H}.hints.json.lock",
        f"sha1/aa/52/53/{C}.record.json",
        f"sha1/aa/52/53/{C}.record.json.lock",
        f"sha1/f5/72/d3/{H}.lock",
        f"sha1/f5/72/d3/{H}.link",
        f"sha1/f5/72/d3/{H}.link.a1B2c3",
        f"sha1/f5/72/d3/{H}.link.a1B2c3d4",
        f"sha1/f5/72/d3/{H}.copying.Ab12Cd",
        f"sha1/f5/72/d3/{H}.downloading.x9Y8z7",
        f"sha1/f5/72/d3/{H}.downloading.x9Y8z7.tmp.abcdefgh",
        f"sha1/f5/72/d3/{H}tmp_bootstrap_abcdefgh",
        f"sha1/f5/72/d3/{H}.abcde.tmp",
        f"sha1/a/a5/{C}",  # 1-char / 2-char block-cache dirs of kachery 0.6.7
        f"sha1/a/a5/25/{C}",
        f"sha1/aa/52/53/{H}",  # basename does not start with the dir names
        f"sha1/F5/72/D3/{H.upper()}",  # upper-case hex is never written by any tool
        f"sha1/f5/72/{H}",  # depth 2
        f"sha1/f5/72/d3/aa/{H}",  # depth 4
        f"sha1/f5/72/d3/{H}/x",
        f"md5/f5/72/d3/{H}",
        f"sha1-trash/f5/72/d3/{H}",
        f"tmp/{H}",
        f"sha1/f5/72/d3/{H}\n",
        f"./sha1/f5/72/d3/{H}",
        "store.file.abcdefghij.tmp",
        "tmp/kachery-p2p-concat--abcdefghij",
        "kachery-node-id",
        "",
    ],
)
def test_non_content_names(relpath: str) -> None:
    assert not is_content_relpath(relpath)
    assert sha1_of_content_relpath(relpath) is None
