"""The manifest of a download: the URI's (proven by its sha1) or one provider's (unproven until the
whole file verifies). See download.py."""

from __future__ import annotations

import asyncio

from ..errors import NotFoundError, RemoteProtocolError, VerificationError
from ..ids import FileUri
from ..quic import messages
from ..quic.identity import short_node_id
from ..store import Manifest
from .download_checks import AttemptFailed
from .endpoint import LinkClosed
from .piece_fetch import PIECE_TIMEOUT
from .slow import Provider

MAX_MANIFEST_BYTES = 16 << 20


async def uri_manifest(uri: FileUri, providers: list[Provider]) -> Manifest:
    """The URI's manifest (checked against its sha1) from the first provider that has it."""
    assert uri.manifest is not None
    errors = []
    for provider in providers:
        try:
            has, _ = await provider.session.request({"op": "has", "sha1": uri.manifest}, timeout=30)
            length = int(messages.check_ok(has)["size"])
            if not 0 < length <= MAX_MANIFEST_BYTES:
                raise RemoteProtocolError(f"a manifest of {length} bytes")
            header = {"op": "get", "sha1": uri.manifest, "start": 0, "end": length}
            reply, data = await provider.session.request(header, timeout=PIECE_TIMEOUT)
            messages.check_ok(reply)
            manifest = Manifest.parse(data, expected_sha1=uri.sha1, expected_manifest_sha1=uri.manifest)
            if manifest.sha1 != uri.sha1:
                raise VerificationError("the manifest describes another file")
            return manifest
        except (RemoteProtocolError, VerificationError, LinkClosed, asyncio.TimeoutError, ValueError,
                KeyError, TypeError) as exc:
            errors.append(f"{short_node_id(provider.node_id)}: {exc}")
    raise NotFoundError(f"no provider could give the manifest {uri.manifest}: {'; '.join(errors)}")


async def provider_manifest(sha1: str, size: int, source: str | None, providers: list[Provider]) -> Manifest | None:
    """A manifest from one provider (unproven until the whole file verifies); None for a small file."""
    provider = next((p for p in providers if p.node_id == source), None)
    if provider is None:
        return None
    try:
        reply, data = await provider.session.request({"op": "manifest", "sha1": sha1}, timeout=PIECE_TIMEOUT)
        messages.check_ok(reply)
        manifest = Manifest.parse(data, expected_sha1=sha1)
    except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError) as exc:
        raise AttemptFailed(f"no manifest from {short_node_id(provider.node_id)}: {exc}") from None
    except (VerificationError, ValueError) as exc:
        who = provider.node_id
        raise AttemptFailed(f"bad manifest from {short_node_id(who)}: {exc}", {who}) from None
    if manifest.sha1 != sha1 or manifest.size != size:
        raise AttemptFailed(f"the manifest from {short_node_id(provider.node_id)} describes another file",
                             {provider.node_id})
    return manifest
