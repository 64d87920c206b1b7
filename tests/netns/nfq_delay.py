"""A constant-delay line for the namespace lab (netem is missing from this kernel): every packet the
kernel hands to NFQUEUE ``--queue`` is held for ``--delay-ms`` and then accepted.

    ip netns exec ROUTER python nfq_delay.py --queue 0 --delay-ms 10

Speaks nfnetlink_queue over a raw netlink socket (no libnetfilter_queue, no C build): the queue is bound in
metadata-only copy mode, so each notification is ~80 bytes and carries no payload. A constant delay keeps
packets in arrival order, so releasing is one ``NFQNL_MSG_VERDICT_BATCH`` (accept every id up to N) per
wake-up, whatever the number of packets due: the per-packet work in Python is reading one id out of a
notification. Notifications are read in bursts (every one waiting, each recv into one reused buffer),
and all packets of a burst share its arrival time. After each wake-up the loop sleeps at least
``--tick-ms`` (default 0.5 ms) so that at 100 Mbit/s a wake-up handles several packets; arrivals are
stamped half a tick early to keep the mean delay on target; wake-ups aim early by a running estimate of
their own lateness (at most 1 ms). A notification the kernel could not deliver (receive buffer full) is
harmless: the next batch verdict releases that packet too.

Prints ``ready`` on stdout once the queue is bound; on SIGTERM/SIGINT it releases everything still held and
prints one JSON line of counters (packets, wake-ups, verdicts, max held, late releases) on stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NETLINK_NO_ENOBUFS = 5
SOL_NETLINK = 270
PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
_HEAD, _ATTR, _ID = struct.Struct("=IH"), struct.Struct("=HH"), struct.Struct("!I")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg: int, flags: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs  # nfgenmsg: family, version, res_id (BE)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


class DelayQueue:
    """One bound NFQUEUE; ``run()`` delays every packet by ``delay`` seconds until ``stop`` is set."""

    def __init__(self, queue: int, delay: float, tick: float, maxlen: int) -> None:
        self.queue, self.delay, self.tick = queue, delay, tick
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(
            _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
            + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
        )  # no NFQA_CFG_F_GSO: a GSO super-packet that slips through is cut into MTU-sized ones before queueing
        self.sock.setblocking(False)
        self._buf = bytearray(1 << 16)
        self.pending: collections.deque[tuple[float, int]] = collections.deque()  # (due, last id of a burst)
        self.stop = False
        self.stats: dict[str, float] = {
            "packets": 0, "bursts": 0, "wakeups": 0, "verdicts": 0, "max_held": 0,
            "late": 0, "late_ms_max": 0.0, "late_ms_sum": 0.0,
        }
        self._held = 0
        self.early = 0.0  # seconds: how much before its due time a burst is released (see _release_due)
        self._counts: collections.deque[int] = collections.deque()

    def _config(self, attrs: bytes) -> None:
        self.sock.send(_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self.queue, attrs, seq=1))
        reply = self.sock.recv(65536)
        _, kind = struct.unpack_from("=IH", reply)
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", reply, 16)
            if err != 0:
                raise OSError(-err, f"nfqueue {self.queue} config: {os.strerror(-err)}")

    def _release(self, last_id: int) -> None:
        attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last_id))
        self.sock.send(_message(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, self.queue, attrs))
        self.stats["verdicts"] += 1

    def _read_burst(self, stamp: float) -> None:
        last = -1
        count = 0
        buf, recv_into = self._buf, self.sock.recv_into
        head, attr, pid = _HEAD.unpack_from, _ATTR.unpack_from, _ID.unpack_from
        while True:  # the kernel sends one notification per datagram: one recv each, into one reused buffer
            try:
                end = recv_into(buf)
            except BlockingIOError:
                break
            off = 0
            while off + 28 <= end:
                length, kind = head(buf, off)
                if length < 16:
                    break
                if kind == PACKET_TYPE:
                    # first attribute follows nlmsghdr(16) + nfgenmsg(4); the kernel puts NFQA_PACKET_HDR first
                    alen, atype = attr(buf, off + 20)
                    if atype & 0x7FFF == NFQA_PACKET_HDR and alen >= 8:
                        (last,) = pid(buf, off + 24)
                        count += 1
                off += (length + 3) & ~3
        if count:
            self.pending.append((stamp + self.delay, last))
            self._counts.append(count)
            self._held += count
            self.stats["packets"] += count
            self.stats["bursts"] += 1
            self.stats["max_held"] = max(self.stats["max_held"], self._held)

    def _release_due(self, now: float) -> None:
        last = -1
        while self.pending and self.pending[0][0] - self.early <= now:
            due, last = self.pending.popleft()
            self._held -= self._counts.popleft()
            late = now - due
            # wake-ups come late by a fairly steady amount (timer slack, scheduling): aim that much early;
            # one sample counts at most 1 ms, so a rare long stall does not make the next packets early
            sample = min(late + self.early, 0.001, self.delay / 4)
            self.early = 0.9 * self.early + 0.1 * sample
            self.stats["late_ms_sum"] += late * 1000
            if late > 0.001:
                self.stats["late"] += 1
                self.stats["late_ms_max"] = max(self.stats["late_ms_max"], round(late * 1000, 2))
        if last >= 0:
            self._release(last)

    def run(self) -> None:
        fd = self.sock.fileno()
        half_tick = self.tick / 2
        while not self.stop:
            now = time.monotonic()
            timeout = max(0.0, self.pending[0][0] - self.early - now) if self.pending else 0.5
            readable, _, _ = select.select([fd], [], [], timeout)
            now = time.monotonic()
            self.stats["wakeups"] += 1
            if readable:
                self._read_burst(now - half_tick if self.tick > 0 else now)
            self._release_due(time.monotonic())
            if self.tick > 0:
                time.sleep(self.tick)
        if self.pending:
            self._release(self.pending[-1][1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number (default 0)")
    parser.add_argument("--delay-ms", type=float, required=True, help="delay added to every packet, in ms")
    parser.add_argument("--tick-ms", type=float, default=0.5, help="minimum sleep between wake-ups (default 0.5)")
    parser.add_argument("--rt", type=int, default=0, help="SCHED_FIFO priority (root; default 0 = normal)")
    parser.add_argument("--probe", action="store_true", help="bind the queue, then exit 0 (a capability check)")
    parser.add_argument("--maxlen", type=int, default=20000, help="kernel queue length (default 20000 packets)")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or args.tick_ms < 0:
        print("nfq_delay: --delay-ms and --tick-ms must be >= 0", file=sys.stderr)
        return 2
    try:
        dq = DelayQueue(args.queue, args.delay_ms / 1000, args.tick_ms / 1000, args.maxlen)
    except OSError as exc:
        print(f"nfq_delay: cannot bind NFQUEUE {args.queue}: {exc}", file=sys.stderr)
        return 1

    if args.probe:
        dq.sock.close()
        return 0
    if args.rt > 0:
        try:  # it sleeps almost always: real-time priority only makes its wake-ups punctual
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt))
        except (OSError, AttributeError) as exc:
            print(f"nfq_delay: SCHED_FIFO unavailable ({exc}); running at normal priority", file=sys.stderr)

    def _stop(*_: object) -> None:
        dq.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("ready", flush=True)
    dq.run()
    print(json.dumps(dq.stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
