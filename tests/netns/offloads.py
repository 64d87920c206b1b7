"""Turn segmentation and receive offloads off on network devices, as ``ethtool -K DEV tso off gso off gro off
tx-udp-segmentation off ...`` would, without the ethtool binary (ETHTOOL_GFEATURES / SFEATURES ioctls).

    ip netns exec NS python offloads.py eth0 [DEV...]

Every feature named in OFF that the device has is switched off, then read back; a feature still active is an
error (exit 1, one line). UDP GSO matters as much as TCP's: a sender using UDP_SEGMENT hands a veth one
~64 KB super-packet that would cross a router as one unit (one delay, one loss coin) unless
``tx-udp-segmentation`` is off, which makes the kernel cut it into MTU-sized datagrams at the sender.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import sys

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO, ETHTOOL_GFEATURES, ETHTOOL_SFEATURES = 0x1B, 0x37, 0x3A, 0x3B
ETH_SS_FEATURES = 4
OFF = (
    "tx-tcp-segmentation", "tx-tcp-ecn-segmentation", "tx-tcp-mangleid-segmentation", "tx-tcp6-segmentation",
    "tx-generic-segmentation", "tx-udp-segmentation", "tx-gso-list", "rx-gro", "rx-gro-list",
    "rx-udp-gro-forwarding", "tx-sctp-segmentation", "tx-tcp-accecn-segmentation",
)


def _ioctl(sock: socket.socket, dev: str, request: bytes) -> bytes:
    buf = ctypes.create_string_buffer(request, len(request))
    ifr = struct.pack("16sP", dev.encode(), ctypes.addressof(buf)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    return buf.raw


def feature_names(sock: socket.socket, dev: str) -> list[str]:
    info = _ioctl(sock, dev, struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
    (count,) = struct.unpack_from("=I", info, 16)
    raw = _ioctl(sock, dev, struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count) + b"\0" * (32 * count))
    return [raw[12 + 32 * i : 12 + 32 * (i + 1)].split(b"\0", 1)[0].decode() for i in range(count)]


def active(sock: socket.socket, dev: str, blocks: int) -> list[int]:
    """The ``active`` word of each 32-feature block."""
    raw = _ioctl(sock, dev, struct.pack("=II", ETHTOOL_GFEATURES, blocks) + b"\0" * (16 * blocks))
    return [struct.unpack_from("=IIII", raw, 8 + 16 * i)[2] for i in range(blocks)]


def offloads_off(dev: str) -> list[str]:
    """Switch OFF's features off on ``dev``; the names of those still active afterwards (empty: done)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        names = feature_names(sock, dev)
        blocks = (len(names) + 31) // 32
        valid = [0] * blocks
        for i, name in enumerate(names):
            if name in OFF:
                valid[i // 32] |= 1 << (i % 32)
        request = struct.pack("=II", ETHTOOL_SFEATURES, blocks) + b"".join(struct.pack("=II", v, 0) for v in valid)
        _ioctl(sock, dev, request)
        words = active(sock, dev, blocks)
        return [name for i, name in enumerate(names) if name in OFF and words[i // 32] >> (i % 32) & 1]


def main(devs: list[str]) -> int:
    for dev in devs:
        try:
            left = offloads_off(dev)
        except OSError as exc:
            print(f"offloads: {dev}: {exc}", file=sys.stderr)
            return 1
        if left:
            print(f"offloads: {dev}: still on after switching off: {', '.join(left)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
