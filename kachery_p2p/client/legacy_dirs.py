"""``sha1dir://`` URIs: a path inside a directory object stored by the original kachery's ``store_dir``.

The directory object is ordinary JSON content (reference/storage-compat.md 2.3)::

    {"files": {"a.txt": {"size": 2, "sha1": "<h40>"}, ...}, "dirs": {"sub": {"files": {...}, "dirs": {...}}}}

``sha1dir://<h>.<label>/sub/b.txt`` walks ``dirs`` for every element but the last and looks the last
one up in ``files``; the result is ``sha1://<file hash>/b.txt``. Pure: the loader is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NotFoundError, UsageError
from ..ids import FileUri, is_sha1_hex


def resolve(uri: FileUri, load_object: Callable[[str], Any]) -> str:
    """The ``sha1://`` URI of the file a ``sha1dir://`` URI names; NotFoundError when it is not there."""
    if not uri.is_dir or uri.algorithm != "sha1":
        raise UsageError(f"not a sha1dir:// URI: {uri}")
    parts = [p for p in uri.name.split("/") if p]
    if not parts:
        raise UsageError(f"{uri} names a directory, not a file: add the file's path after the hash")
    node = load_object(f"sha1://{uri.hash}/dir.json")
    return f"sha1://{find_in_tree(node, parts, str(uri))}/{parts[-1]}"


def find_in_tree(node: Any, parts: list[str], shown: str) -> str:
    """The sha1 of ``parts`` (a file path split on '/') in a directory object."""
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            raise UsageError(f"{shown}: the directory object is not in the kachery directory format")
        last = i == len(parts) - 1
        entries = node.get("files" if last else "dirs")
        if not isinstance(entries, dict) or part not in entries:
            kind = "file" if last else "directory"
            raise NotFoundError(f"{shown}: no {kind} {'/'.join(parts[: i + 1])!r} in the directory")
        node = entries[part]
    if not isinstance(node, dict):
        raise UsageError(f"{shown}: the directory object is not in the kachery directory format")
    sha1 = node.get("sha1")
    if not isinstance(sha1, str) or not is_sha1_hex(sha1):
        raise UsageError(f"{shown}: the directory lists this file without a sha1 (md5 is not supported)")
    return sha1.lower()
