"""Split a py-spy ``--format raw`` profile (collapsed stacks) into where the time goes: aioquic vs our code vs
the event loop, by the innermost frame of each sample that belongs to a known group.

    .venv/bin/python -m bench.profile_split PROFILE.txt [--top 25]

Groups (first match from the leaf up): aioquic (and the cryptography it calls: its time), hashing and store
writes (hashlib, file writes under kachery_p2p/store), the UDP socket (our daemon/udp.py, incl. the syscalls
it makes), demux (daemon/endpoint.py, relay/frames.py, paths.py), link pump (daemon/link.py: timers, drain,
events), session/transfer (the rest of kachery_p2p), event loop (asyncio/uvloop frames with nothing of ours
above), other. A sample whose innermost frame is the loop's own entry (uvloop's C loop: its epoll waits, which
py-spy cannot always tell from work, and its dispatch) is also shown apart: the second split leaves those out.
"""

from __future__ import annotations

import argparse
import collections
import sys

GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("aioquic", ("aioquic/", "cryptography/")),
    ("sha1/store", ("hashlib", "kachery_p2p/store/")),
    ("udp socket (ours)", ("kachery_p2p/daemon/udp.py",)),
    ("demux (ours)", ("kachery_p2p/daemon/endpoint.py", "kachery_p2p/relay/frames.py", "kachery_p2p/daemon/paths.py",
                      "kachery_p2p/peering/path.py")),
    ("link pump (ours)", ("kachery_p2p/daemon/link.py",)),
    ("session/transfer (ours)", ("kachery_p2p/",)),
    ("event loop", ("asyncio/", "uvloop/", "selectors.py")),
]


LOOP_ONLY = "(loop entry as leaf)"


def classify(stack: list[str]) -> str:
    for frame in reversed(stack):
        for group, needles in GROUPS:
            if any(n in frame for n in needles):
                return group
    return "other"


def split(path: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    groups: collections.Counter[str] = collections.Counter()
    loop_only = 0
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack_text, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack_text:
                continue
            count = int(count_text)
            stack = stack_text.split(";")
            total += count
            groups[classify(stack)] += count
            leaves[stack[-1]] += count
            if stack[-1].startswith("Runner.run (") or stack[-1].startswith("run_forever ("):
                loop_only += count
    groups[LOOP_ONLY] = loop_only
    return groups, leaves, total


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        groups, leaves, total = split(args.profile)
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.profile}: {exc}", file=sys.stderr)
        return 1
    if not total:
        print("no samples")
        return 1
    loop_only = groups.pop(LOOP_ONLY, 0)
    print(f"{total} samples")
    for group, count in groups.most_common():
        print(f"  {group:26s} {100.0 * count / total:5.1f}%")
    busy = total - loop_only
    if loop_only and busy:
        print(f"without the {loop_only} samples in the loop's own C code ({100.0 * loop_only / total:.1f}%):")
        for group, count in groups.most_common():
            count -= loop_only if group == "event loop" else 0
            print(f"  {group:26s} {100.0 * count / busy:5.1f}%")
    print("top leaf frames:")
    for frame, count in leaves.most_common(args.top):
        print(f"  {100.0 * count / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
