"""The one table of error codes: control endpoint (HTTP status, exception) and peer protocol.

The daemon turns an exception into ``{"code", "message"}`` with ``code_for``; the client turns a code
back into the same exception class with ``exception_for``; the peer protocol accepts the codes marked
``peer``. Standard library only (the client imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import (
    DaemonAuthError,
    DaemonError,
    DaemonStoppedError,
    InvalidUriError,
    KacheryP2PError,
    NotFoundError,
    RemoteProtocolError,
    StoreError,
    TransferCancelledError,
    UsageError,
    VerificationError,
)


@dataclass(frozen=True)
class ErrorCode:
    code: str
    exception: type[KacheryP2PError]
    http_status: int
    control: bool = True  # sent by the control endpoint for this exception class
    peer: bool = False  # allowed in peer protocol replies


# Most specific first: ``code_for`` takes the first entry whose class the exception is an instance of.
TABLE: tuple[ErrorCode, ...] = (
    ErrorCode("invalid_uri", InvalidUriError, 400),
    ErrorCode("bad_request", UsageError, 400, peer=True),
    ErrorCode("not_found", NotFoundError, 404, peer=True),
    ErrorCode("verification_error", VerificationError, 502),
    ErrorCode("store_error", StoreError, 500),
    ErrorCode("unauthorized", DaemonAuthError, 401),
    ErrorCode("daemon_stopped", DaemonStoppedError, 503),
    ErrorCode("cancelled", TransferCancelledError, 409),
    ErrorCode("not_authorized", RemoteProtocolError, 403, control=False, peer=True),
    ErrorCode("unauthenticated", RemoteProtocolError, 401, control=False, peer=True),
    ErrorCode("busy", RemoteProtocolError, 503, control=False, peer=True),
    ErrorCode("internal", RemoteProtocolError, 500, control=False, peer=True),
    ErrorCode("daemon_error", DaemonError, 500),
    ErrorCode("error", KacheryP2PError, 500),
)
PEER_ERROR_CODES: tuple[str, ...] = tuple(entry.code for entry in TABLE if entry.peer)
_BY_CODE = {entry.code: entry for entry in TABLE}


def code_for(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, code) for an exception raised while serving a control request."""
    for entry in TABLE:
        if entry.control and isinstance(exc, entry.exception):
            return entry.http_status, entry.code
    return 500, "error"


def exception_for(code: str) -> type[KacheryP2PError]:
    """The exception class a client raises for ``code`` (DaemonError for codes it does not know)."""
    entry = _BY_CODE.get(code)
    if entry is None or not entry.control or entry.exception is KacheryP2PError:
        return DaemonError
    return entry.exception
