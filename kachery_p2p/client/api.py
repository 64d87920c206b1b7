"""The Python API: thin functions over the daemon's control endpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import client_config_from_environ
from ..errors import UsageError
from ..ids import FileUri
from .http import ControlClient
from .loading import decode_text, parse_json
from .loading import fetch_file as fetch_file
from .loading import iter_bytes as iter_bytes
from .loading import load_bytes as load_bytes
from .loading import load_file as load_file

ProgressCallback = Callable[[dict[str, Any]], None]


def _client() -> ControlClient:
    return ControlClient(client_config_from_environ())


def _check_uri(uri: str) -> FileUri:
    return FileUri.parse(uri)


def load_text(uri: str, *, timeout_sec: float | None = None) -> str | None:
    """The file as UTF-8 text, or None if not found; FileFormatError if it is not text."""
    data = load_bytes(uri, timeout_sec=timeout_sec)
    return None if data is None else decode_text(data, uri)


def load_json(uri: str, *, timeout_sec: float | None = None) -> Any:
    """The parsed JSON, or None if the file is not found; FileFormatError if it is not JSON."""
    text = load_text(uri, timeout_sec=timeout_sec)
    return None if text is None else parse_json(text, uri)


def find_file(uri: str, timeout_sec: float = 5.0) -> Iterator[dict[str, Any]]:
    """Yield one dict per provider as answers arrive: ``node_id``, ``label``, ``size``, ``local``."""
    _check_uri(uri)
    for message in _client().post_json_lines(
        "/find", {"uri": uri, "timeoutSec": timeout_sec}, timeout=timeout_sec + 30
    ):
        if message.get("type") == "provider":
            message.pop("type")
            yield message


def store_file(path: str | os.PathLike[str], basename: str | None = None) -> str:
    """Store a local file in the content store; return its ``sha1://`` URI."""
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise UsageError(f"cannot read {path}: no such file")
    if not source.is_file():
        raise UsageError(f"cannot store {path}: not a regular file")
    if str(path).endswith("/"):
        raise UsageError(f"cannot read {path}: not a directory")
    name = basename if basename is not None else source.name
    client = _client()
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            result = client.post_json("/store", {"path": str(source), "name": name}, timeout=3600.0)
            if result.get("needUpload"):
                result = client.post_stream("/upload", handle, size, name)
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    return str(result["uri"])


def store_bytes(data: bytes, basename: str = "file.dat") -> str:
    """Store bytes; return the URI."""
    import io

    return str(_client().post_stream("/upload", io.BytesIO(data), len(data), basename)["uri"])


def store_text(text: str, basename: str = "file.txt") -> str:
    return store_bytes(text.encode("utf-8"), basename)


def store_json(obj: Any, basename: str = "file.json") -> str:
    return store_bytes(json.dumps(obj, separators=(",", ":")).encode("utf-8"), basename)


def get_node_id() -> str:
    return str(_client().get_json("/node-info")["nodeId"])


def get_node_info() -> dict[str, Any]:
    return _client().get_json("/node-info")


def get_channels() -> list[str]:
    return [str(name) for name in _client().get_json("/channels")["channels"]]


def join_channel(name: str) -> bool:
    """Join a channel; False when already joined."""
    return bool(_client().post_json("/channels/join", {"name": name})["changed"])


def leave_channel(name: str) -> bool:
    """Leave a channel; False when it was not joined."""
    return bool(_client().post_json("/channels/leave", {"name": name})["changed"])


def get_peers() -> list[dict[str, Any]]:
    return list(_client().get_json("/peers")["peers"])


def stop_daemon() -> None:
    _client().post_json("/halt", {})


def probe() -> dict[str, Any]:
    return _client().probe()
