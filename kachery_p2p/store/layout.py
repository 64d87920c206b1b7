"""Where content lives inside a kachery storage directory (pure, no I/O).

The layout is shared by every kachery generation (see reference/storage-compat.md section 1)::

    <root>/sha1/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>     h = 40 lower-case hex digits
    <root>/md5/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>      read-only, original kachery only

Anything else under ``sha1/`` (``*.hints.json``, ``*.lock``, ``*.link``, ``*.copying.*``, temp
files, the 1-character block-cache directories, ...) belongs to other tools and is not content.
"""

from __future__ import annotations

import re

from ..errors import UsageError

CHUNK_SIZE = 20_000_000
"""Chunk size of the manifests we write (kachery-p2p's value), and the manifest threshold."""

_HEX_LENGTH = {"sha1": 40, "md5": 32}
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_DIR_RE = re.compile(r"[0-9a-f]{2}")


def content_relpath(sha1: str, algorithm: str = "sha1") -> str:
    """``sha1/aa/bb/cc/<h>`` for a hash (lower-cased); UsageError for a malformed hash."""
    length = _HEX_LENGTH.get(algorithm)
    if length is None:
        raise UsageError(f"unsupported hash algorithm {algorithm!r} (expected sha1 or md5)")
    if not isinstance(sha1, str) or len(sha1) != length or not _HEX_RE.fullmatch(sha1):
        raise UsageError(f"not a {algorithm} hash (need {length} hex digits): {sha1!r}")
    h = sha1.lower()
    return f"{algorithm}/{h[0:2]}/{h[2:4]}/{h[4:6]}/{h}"


def is_content_relpath(relpath: str) -> bool:
    """True iff ``relpath`` (relative to the store root, '/'-separated) names a sha1 content file.

    Same rule as kachery-daemon's cache scanner: depth 3 under ``sha1/``, each directory two
    lower-case hex digits, basename 40 lower-case hex digits starting with the directory names.
    """
    parts = relpath.split("/")
    if len(parts) != 5 or parts[0] != "sha1":
        return False
    dirs, name = parts[1:4], parts[4]
    if not all(_DIR_RE.fullmatch(d) for d in dirs):
        return False
    return bool(_SHA1_RE.fullmatch(name)) and name.startswith("".join(dirs))


def sha1_of_content_relpath(relpath: str) -> str | None:
    """The hash a content relpath stores, or None when it is not a content file."""
    return relpath.rsplit("/", 1)[-1] if is_content_relpath(relpath) else None
