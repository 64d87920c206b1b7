"""Writing a loaded file where the user asked (``--dest``), and decoding text and JSON.

A copy (``dest``) is written the way ``cp`` and ``curl -o`` write: a regular file (or a symlink to
one, which stays a symlink) is replaced atomically through a temp file in the same directory, keeping
an existing file's mode and giving a new one ``0666 & ~umask``; anything else (a device, a FIFO, a
symlink to one, ``/dev/stdout``) is opened and written through, never replaced.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..client_config import client_config_from_environ
from ..errors import FileFormatError, StoreError, UsageError
from .http import ControlClient

ProgressCallback = Callable[[dict[str, Any]], None]
COPY_BLOCK = 1 << 20


def _client() -> ControlClient:
    return ControlClient(client_config_from_environ())


def file_blocks(source: Path, fallback: Callable[[], Iterator[bytes]]) -> Iterator[bytes]:
    """The stored file's bytes: read directly, or ``fallback()`` (through the daemon) if we may not."""
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below
    except PermissionError:
        yield from fallback()
        return
    with handle:
        while block := handle.read(COPY_BLOCK):
            yield block


def write_dest(dest: Path, blocks: Iterable[bytes]) -> None:
    """Write ``blocks`` to ``dest`` as cp does (see the module docstring)."""
    dest = dest.expanduser()
    try:
        info: os.stat_result | None = dest.stat()  # follows symlinks: what a write would reach
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--dest {dest} is a directory; give a file path")
    if info is not None and not stat.S_ISREG(info.st_mode):
        _write_through(dest, blocks)
    else:
        target = Path(os.path.realpath(dest)) if dest.is_symlink() else dest
        _replace_atomically(target, blocks, None if info is None else stat.S_IMODE(info.st_mode))


def _write_through(dest: Path, blocks: Iterable[bytes]) -> None:
    try:
        with open(dest, "wb", buffering=0) as out:
            _copy(blocks, out)
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from None


def _replace_atomically(dest: Path, blocks: Iterable[bytes], mode: int | None) -> None:
    import tempfile  # only --dest writes through a temp file (it costs every command ~5 ms to import)

    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            _copy(blocks, out)
            out.flush()
            os.fchmod(out.fileno(), _new_file_mode() if mode is None else mode)
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _copy(blocks: Iterable[bytes], out: BinaryIO) -> None:
    for block in blocks:
        view = memoryview(block)
        while view:
            written = out.write(view)
            view = view[written or len(view) :]


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def decode_text(data: bytes, uri: str) -> str:
    """The bytes as UTF-8 text; FileFormatError (one of ours, and a ValueError) if they are not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"{uri} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}): use load_bytes or load_file"
        ) from None


def parse_json(text: str, uri: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FileFormatError(f"{uri} is not JSON: {exc}") from None
