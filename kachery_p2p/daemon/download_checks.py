"""Verdicts of a download: who lied, whether the disk is full, the error when nothing verified."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from ..errors import NotFoundError, StoreError
from ..quic.identity import short_node_id
from ..transfer.policy import DownloadPolicy


class AttemptFailed(Exception):
    """One attempt of a download gave no verified file; ``liars``: providers proven wrong."""

    def __init__(self, message: str, liars: set[str] | None = None) -> None:
        super().__init__(message)
        self.liars = liars or set()


def disk_full(exc: StoreError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


def no_attempt_left(sha1: str, policy: DownloadPolicy, failures: list[str], trusted: bool) -> Exception:
    if policy.too_big and not policy.attempts:
        sizes = ", ".join(f"{size} bytes" for size in sorted(policy.too_big))
        return StoreError(f"not enough free disk space to download {sha1} (claimed {sizes}, with a margin kept free)")
    liars = ", ".join(short_node_id(n) for n in sorted(policy.liars))
    detail = "; ".join(failures) or "no provider's claim could be tried"
    return NotFoundError(
        f"could not download {sha1}: no provider's bytes verified ({detail})" + (f" (liars: {liars})" if liars else "")
    )


def piece_hashes(path: Path, sources: dict[tuple[int, int], str]) -> dict[tuple[int, int], tuple[str, str]]:
    """(provider, sha1 of the bytes it sent) for each piece of a chunk that failed verification."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return {
            (start, end): (provider, hashlib.sha1(os.pread(fd, end - start, start)).hexdigest())
            for (start, end), provider in sources.items()
        }
    finally:
        os.close(fd)


def liars_among(path: Path, earlier: dict[tuple[int, int], tuple[str, str]]) -> list[str]:
    """Providers whose earlier piece differs from the now verified bytes at the same place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sorted(
            {
                provider
                for (start, end), (provider, digest) in earlier.items()
                if hashlib.sha1(os.pread(fd, end - start, start)).hexdigest() != digest
            }
        )
    finally:
        os.close(fd)
