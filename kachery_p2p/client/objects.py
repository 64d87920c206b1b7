"""The original's typed loads and stores: objects, numpy arrays, restricted pickles, temp dirs.

numpy is optional (``pip install 'kachery-p2p[numpy]'``) and imported only by the npy functions.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import UsageError
from . import local
from .api import load_bytes, load_json, store_bytes, store_json
from .safe_pickle import safe_dumps, safe_loads

NUMPY_HINT = "numpy is not installed: pip install 'kachery-p2p[numpy]'"


def _numpy(what: str) -> Any:
    try:
        import numpy
    except ImportError:
        raise UsageError(f"{what} needs numpy, which is not installed: pip install 'kachery-p2p[numpy]'") from None
    return numpy


def load_object(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None) -> Any:
    """Deprecated in the original (use load_json); the parsed JSON, or None if not found."""
    print("WARNING: load_object() is deprecated. Use load_json() instead.", file=sys.stderr)
    return load_json(uri, p2p=p2p, from_node=from_node)


def store_object(object: Any, basename: str | None = None) -> str:
    """Deprecated in the original (use store_json); the URI of the stored JSON."""
    print("WARNING: store_object() is deprecated. Use store_json() instead.", file=sys.stderr)
    return store_json(object, basename=basename)


def load_npy(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None) -> Any:
    """The numpy array in a ``.npy`` file (never unpickles objects), or None if not found."""
    np = _numpy("load_npy")
    data = load_bytes(uri, p2p=p2p, from_node=from_node)
    if data is None:
        return None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"{uri} is not a .npy file without objects: {exc}") from None


def store_npy(array: Any, basename: str | None = None) -> str:
    """Store a numpy array as ``.npy`` (named ``file.npy`` by default; object arrays refused); its URI."""
    np = _numpy("store_npy")
    buffer = io.BytesIO()
    try:
        np.save(buffer, array, allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"cannot store this array as .npy: {exc}") from None
    return store_bytes(buffer.getvalue(), basename if basename is not None else "file.npy")


def load_pkl(uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None) -> Any:
    """A value from the original's restricted pickle format, or None if not found.

    Only plain data, numpy arrays and numpy scalars are accepted; any other pickle is refused with
    UsageError before any of it runs.
    """
    data = load_bytes(uri, p2p=p2p, from_node=from_node)
    return None if data is None else safe_loads(data)


def store_pkl(x: Any, basename: str | None = None) -> str:
    """Store a value in the restricted pickle format (named ``file.pkl`` by default); its URI."""
    return store_bytes(safe_dumps(x), basename if basename is not None else "file.pkl")


def kachery_temp_dir() -> Path:
    """``$KACHERY_TEMP_DIR``, else ``$KACHERY_OFFLINE_STORAGE_DIR/kachery-tmp`` offline, else ``<tmp>/kachery-tmp``."""
    value = os.environ.get("KACHERY_TEMP_DIR")
    if value:
        path = Path(value).expanduser()
    else:
        offline = local.offline_root()
        path = offline / "kachery-tmp" if offline is not None else Path(tempfile.gettempdir()) / "kachery-tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


class TemporaryDirectory:
    """``with TemporaryDirectory() as path:`` a fresh directory under the kachery temp dir, removed at the
    end (unless ``remove=False`` or ``KACHERY_P2P_KEEP_TEMP_FILES=1``)."""

    def __init__(self, remove: bool = True, prefix: str = "tmp") -> None:
        self._remove = remove
        self._prefix = prefix
        self._path: str | None = None

    def __enter__(self) -> str:
        self._path = tempfile.mkdtemp(prefix=self._prefix, dir=kachery_temp_dir())
        return self._path

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._path is None or not self._remove or os.environ.get("KACHERY_P2P_KEEP_TEMP_FILES") == "1":
            return
        for attempt in range(5):  # as the original: a few tries (NFS can hold files briefly)
            shutil.rmtree(self._path, ignore_errors=attempt < 4)
            if not os.path.exists(self._path):
                return
            time.sleep(0.2)

    def path(self) -> str | None:
        return self._path
