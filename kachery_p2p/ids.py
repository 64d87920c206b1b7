"""Value types with one parse and one format each: file URIs, node ids, channel names.

URI grammar (accepted on input, see reference/storage-compat.md section 7)::

    uri     = alg "://" hex [ "." label ] [ "/" name ] [ "?" query ]
            / alg "dir://" hex [ "." label ] [ "/" path ] [ "?" query ]
    alg     = "sha1" / "md5"                 (case-insensitive)
    hex     = 40 hex digits (sha1) / 32 (md5) (case-insensitive, kept lower-case)
    name    = anything but "?"; may hold "/", spaces and UTF-8
    query   = "manifest=" hex40 / "chunkOf=" hex40 "~" int "~" int / "label=" text / other k=v (ignored)
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from typing import TypeGuard

from .errors import InvalidChannelNameError, InvalidUriError, UsageError

_HEX_LENGTH = {"sha1": 40, "md5": 32}
_HEX_RE = re.compile(r"^[0-9a-fA-F]+\Z")
# 64 hex digits: node ids (Ed25519 public keys), rendezvous ids, channel proofs. The wire form is
# lower-case (HEX64_RE); ids typed by people or stored by older versions may be in any case.
HEX64_RE = re.compile(r"[0-9a-f]{64}")
HEX64_ANY_CASE_RE = re.compile(r"[0-9a-fA-F]{64}")
MAX_CHANNEL_NAME = 200
SHA1_EMPTY = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and bool(_HEX_RE.match(value))


@dataclass(frozen=True)
class ChunkOf:
    """The ``?chunkOf=<sha1>~<start>~<end>`` part: this blob is bytes [start, end) of a parent file."""

    sha1: str
    start: int
    end: int


@dataclass(frozen=True)
class FileUri:
    """A parsed kachery URI. ``hash`` is always lower-case."""

    algorithm: str
    hash: str
    name: str = ""
    label: str = ""
    manifest: str | None = None
    chunk_of: ChunkOf | None = None
    is_dir: bool = False

    @property
    def sha1(self) -> str:
        """The sha1 of the content; raises UsageError for md5 URIs."""
        if self.algorithm != "sha1":
            raise UsageError(f"only sha1 URIs can be shared between nodes, not {self.algorithm}://")
        return self.hash

    @classmethod
    def parse(cls, text: str) -> FileUri:
        """Parse any accepted form; raise InvalidUriError with a one-line reason otherwise."""
        if not isinstance(text, str):
            raise InvalidUriError(f"not a kachery URI: {text!r}")
        shown = text if len(text) <= 120 else text[:117] + "..."
        head, sep, query = text.partition("?")
        parts = head.split("/")
        if len(parts) < 3 or not parts[0].endswith(":") or parts[1] != "":
            raise InvalidUriError(f"not a kachery URI (expected sha1://<hash>/<name>): {shown!r}")
        scheme = parts[0][:-1].lower()
        is_dir = scheme.endswith("dir")
        algorithm = scheme[:-3] if is_dir else scheme
        if algorithm not in _HEX_LENGTH:
            raise InvalidUriError(f"unsupported URI scheme {parts[0]!r} (expected sha1:// or md5://): {shown!r}")
        hash_part, _, label = parts[2].partition(".")
        if not _is_hex(hash_part, _HEX_LENGTH[algorithm]):
            raise InvalidUriError(
                f"bad hash in URI (need {_HEX_LENGTH[algorithm]} hex digits after {scheme}://): {shown!r}"
            )
        name = "/".join(parts[3:])
        manifest: str | None = None
        chunk_of: ChunkOf | None = None
        if sep:
            fields = urllib.parse.parse_qs(query, keep_blank_values=True)
            if "manifest" in fields:
                value = fields["manifest"][0]
                if not _is_hex(value, 40):
                    raise InvalidUriError(f"bad manifest hash in URI: {shown!r}")
                manifest = value.lower()
            if "chunkOf" in fields:
                chunk_of = _parse_chunk_of(fields["chunkOf"][0], shown)
            if not name and "label" in fields:
                name = fields["label"][0]
        return cls(
            algorithm=algorithm,
            hash=hash_part.lower(),
            name=name,
            label=label,
            manifest=manifest,
            chunk_of=chunk_of,
            is_dir=is_dir,
        )

    def __str__(self) -> str:
        scheme = f"{self.algorithm}dir" if self.is_dir else self.algorithm
        text = f"{scheme}://{self.hash}"
        if self.label:
            text += f".{self.label}"
        if self.name:
            # Only what would break the URI is escaped: '?' (query) and line breaks (one URI per line).
            text += "/" + self.name.replace("?", "%3F").replace("\n", "%0A").replace("\r", "%0D")
        query = []
        if self.manifest:
            query.append(f"manifest={self.manifest}")
        if self.chunk_of:
            query.append(f"chunkOf={self.chunk_of.sha1}~{self.chunk_of.start}~{self.chunk_of.end}")
        if query:
            text += "?" + "&".join(query)
        return text


def _parse_chunk_of(value: str, shown: str) -> ChunkOf:
    pieces = value.split("~")
    if len(pieces) != 3 or not _is_hex(pieces[0], 40):
        raise InvalidUriError(f"bad chunkOf in URI (need <sha1>~<start>~<end>): {shown!r}")
    try:
        start, end = int(pieces[1]), int(pieces[2])
    except ValueError:
        raise InvalidUriError(f"bad chunkOf byte range in URI: {shown!r}") from None
    if start < 0 or end < start:
        raise InvalidUriError(f"bad chunkOf byte range in URI: {shown!r}")
    return ChunkOf(sha1=pieces[0].lower(), start=start, end=end)


def format_store_uri(sha1: str, basename: str, manifest_sha1: str | None) -> str:
    """The URI `kachery-p2p-store` prints, exactly as the original: name raw, only '?' escaped."""
    return str(FileUri(algorithm="sha1", hash=sha1, name=basename, manifest=manifest_sha1))


def parse_node_id(text: str) -> str:
    """A node id is the 64 hex digits of an Ed25519 public key; returned lower-case."""
    if not is_hex64(text, any_case=True):
        raise UsageError(f"not a node id (need 64 hex digits): {text!r}")
    return text.lower()


def parse_channel_name(text: str) -> str:
    """A channel name: 1 to 200 printable characters, any script, without spaces or control characters
    (URLs are fine). Returned in Unicode NFC form, so that one name typed two ways is one channel."""
    name = unicodedata.normalize("NFC", text) if isinstance(text, str) else ""
    if not 1 <= len(name) <= MAX_CHANNEL_NAME or not name.isprintable() or any(c.isspace() for c in name):
        raise InvalidChannelNameError(
            f"bad channel name {text!r}: use 1 to {MAX_CHANNEL_NAME} printable characters without spaces"
        )
    return name


def is_sha1_hex(text: str) -> bool:
    """True for 40 lower- or upper-case hex digits."""
    return _is_hex(text, 40)


def is_hex64(value: object, any_case: bool = False) -> TypeGuard[str]:
    """True for exactly 64 hex digits (lower-case only unless ``any_case``)."""
    pattern = HEX64_ANY_CASE_RE if any_case else HEX64_RE
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def format_address(address: tuple[object, ...]) -> str:
    """ "host:port" of a socket address ("[v6]:port" for IPv6; IPv4-mapped IPv6 as IPv4)."""
    host, port = str(address[0]), address[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def short_node_id(node_id: str) -> str:
    """The first 12 hex digits of a node id, for messages and logs."""
    return node_id[:12] + "..." if len(node_id) > 12 else node_id
