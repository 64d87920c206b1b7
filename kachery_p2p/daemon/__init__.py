"""The daemon: the asyncio pumps around the sans-IO packages, the control endpoint, the peer network.

aiohttp, which the daemon uses only as an HTTP server, builds two client TLS contexts when it is imported
and loads the system's CA certificates into each: with Debian's full ca-certificates bundle that is
3 MB of an idle daemon's RSS and 0.1-0.5 s of every daemon start. The daemon never opens a client TLS
connection that would need them (peers and relays are checked by their key-bound certificates, the
control endpoint serves its own), so aiohttp is imported here, before any daemon module uses it, with
that loading skipped.
"""

from __future__ import annotations

import ssl
import sys


def _import_aiohttp_without_ca_certificates() -> None:
    if "aiohttp" in sys.modules:
        return
    name = "set_default_verify_paths"
    own = ssl.SSLContext.__dict__.get(name)
    setattr(ssl.SSLContext, name, lambda self: None)
    try:
        import aiohttp  # noqa: F401
    finally:
        if own is None:
            delattr(ssl.SSLContext, name)
        else:
            setattr(ssl.SSLContext, name, own)


_import_aiohttp_without_ca_certificates()
