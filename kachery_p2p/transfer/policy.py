"""Which providers to believe, decided by verification only (sans-IO).

Providers report a size for a file; the URI's sha1 is the only thing that is true. A size claim is
never trusted over verification: every claimed size gets its turn (most claimants first, then the
smaller size, which costs less disk), the attempt whose bytes verify against the sha1 wins, and
whoever claimed another size lied. A file above the manifest threshold without a manifest in its
URI needs a manifest from a provider, which cannot be checked before the whole file is: each
claimant's manifest is a separate attempt, and an attempt that fails verification is discarded at
once (its partial file goes, it is never kept for resuming).

Disk: an attempt starts only if its size fits in the free space with a margin left over, so a
claim of 200 MB cannot fill a 50 MB disk; sizes that do not fit are skipped (and reported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Left free on the disk after a download's full size is accounted for: 5 % of the disk, at most this.
FREE_SPACE_MARGIN = 256 * 1024 * 1024
FREE_SPACE_FRACTION = 0.05


def free_space_margin(total_bytes: int) -> int:
    return min(FREE_SPACE_MARGIN, int(total_bytes * FREE_SPACE_FRACTION))


def fits_on_disk(size: int, free_bytes: int, total_bytes: int, already_on_disk: int = 0) -> bool:
    """Can a download of ``size`` bytes (of which ``already_on_disk`` are written) finish and still
    leave the margin free?"""
    return size - already_on_disk + free_space_margin(total_bytes) <= free_bytes


@dataclass(frozen=True)
class Attempt:
    size: int
    providers: tuple[str, ...]
    # Who gives the manifest, when it must come from a provider (None: no manifest, or the URI's).
    manifest_source: str | None = None


@dataclass
class DownloadPolicy:
    claims: dict[str, int]
    needs_provider_manifest: Callable[[int], bool]
    failed_sizes: set[int] = field(default_factory=set)
    too_big: set[int] = field(default_factory=set)
    liars: set[str] = field(default_factory=set)
    _manifests_tried: set[tuple[int, str]] = field(default_factory=set)
    _attempts: int = 0

    def sizes(self) -> list[int]:
        """Claimed sizes in the order they are tried: most claimants first, then the smaller."""
        counts: dict[int, int] = {}
        for size in self.claims.values():
            counts[size] = counts.get(size, 0) + 1
        return sorted(counts, key=lambda size: (-counts[size], size))

    def next_attempt(self, fits: Callable[[int], bool]) -> Attempt | None:
        for size in self.sizes():
            if size in self.failed_sizes or size in self.too_big:
                continue
            if not fits(size):
                self.too_big.add(size)
                continue
            members = tuple(n for n, s in self.claims.items() if s == size and n not in self.liars)
            if not members:
                self.failed_sizes.add(size)
                continue
            if not self.needs_provider_manifest(size):
                self._attempts += 1
                return Attempt(size, members)
            for source in members:
                if (size, source) not in self._manifests_tried:
                    self._manifests_tried.add((size, source))
                    self._attempts += 1
                    return Attempt(size, members, source)
            self.failed_sizes.add(size)
        return None

    def attempt_failed(self, attempt: Attempt, liars: set[str] | frozenset[str] = frozenset()) -> None:
        """The attempt did not give verified bytes. ``liars``: providers proven wrong (their bytes
        failed a trusted hash, or their manifest described other bytes)."""
        self.liars |= set(liars)
        if attempt.manifest_source is None:
            self.failed_sizes.add(attempt.size)

    def succeeded(self, attempt: Attempt) -> set[str]:
        """The file verified at ``attempt.size``: everyone who claimed another size lied."""
        self.liars |= {n for n, s in self.claims.items() if s != attempt.size}
        return set(self.liars)

    @property
    def attempts(self) -> int:
        return self._attempts
