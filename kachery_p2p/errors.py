"""The one exception tree of kachery-p2p.

Every message is written for the person at the keyboard: the CLI prints ``str(exc)`` on one line
and exits with ``exc.exit_code``.

    KacheryP2PError                      base class; never raised directly
    ├── UsageError                       bad input from the user (exit 2)
    │   ├── InvalidUriError              a string that is not a kachery URI
    │   ├── InvalidChannelNameError      a channel name we cannot use
    │   └── ConfigError                  a bad option or environment value
    ├── DaemonError                      talking to the local daemon failed
    │   ├── DaemonNotRunningError        nothing answers on the control port
    │   ├── DaemonAuthError              the control token is missing or wrong
    │   ├── DaemonAlreadyRunningError    a second daemon for the same config dir
    │   └── DaemonStoppedError           the daemon stopped during a request
    ├── NotFoundError                    no copy of the file here or on any peer (exit 3)
    ├── StoreError                       the content store could not read or write
    │   └── VerificationError            bytes did not hash to what they claim
    ├── IdentityError                    the node key is unusable or unsafe
    ├── RemoteProtocolError              a peer broke the protocol (its fault)
    ├── LocalProtocolError               we misused a protocol object (our bug)
    ├── FeedPermissionError              a feed owner refused our submitted message
    ├── FileFormatError                  a file is not the text or JSON expected
    └── PortInUseError                   the daemon cannot listen on a port

The error codes that carry these over the control endpoint and the peer protocol: ``error_codes.py``.
"""

from __future__ import annotations


class KacheryP2PError(Exception):
    """Base of all kachery-p2p errors."""

    exit_code = 1


class UsageError(KacheryP2PError):
    """The user gave input we cannot use."""

    exit_code = 2


class InvalidUriError(UsageError, ValueError):
    """A string is not a valid kachery URI."""


class InvalidChannelNameError(UsageError, ValueError):
    """A channel name is empty, too long or has characters we do not accept."""


class ConfigError(UsageError):
    """An option or an environment variable has a bad value."""


class DaemonError(KacheryP2PError):
    """Talking to the local daemon failed."""


class DaemonNotRunningError(DaemonError):
    """No daemon answers on the control port."""


class DaemonAuthError(DaemonError):
    """The control token is missing, unreadable or wrong."""


class DaemonAlreadyRunningError(DaemonError):
    """Another daemon already runs with the same config dir."""


class NotFoundError(KacheryP2PError):
    """The file is neither in the local store nor on any reachable peer."""

    exit_code = 3


class StoreError(KacheryP2PError):
    """The content store could not read or write a file."""


class VerificationError(StoreError):
    """Bytes did not hash to the value they were claimed to have."""


class IdentityError(KacheryP2PError):
    """The node key is missing, malformed or readable by others."""


class RemoteProtocolError(KacheryP2PError):
    """A peer sent something the protocol does not allow."""

    def __init__(self, message: str, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(KacheryP2PError):
    """We used a protocol object in a way it does not allow (a bug in kachery-p2p)."""


class TransferCancelledError(KacheryP2PError):
    """The owner cancelled a download (``kachery-p2p-cancel`` or the dashboard); its verified chunks are kept."""


class LoadFileError(NotFoundError):
    """The original kachery-p2p's load error (its load_file returned None instead; so does ours)."""


class FeedPermissionError(KacheryP2PError, PermissionError):
    """A feed's owner refused a submitted message: this node is not in the subfeed's access rules."""


class DaemonStoppedError(DaemonError):
    """The daemon stopped (or vanished) while a request was under way."""


class FileFormatError(KacheryP2PError, ValueError):
    """A file is not the text or JSON that a function expected (``load_text`` on binary bytes)."""


class PortInUseError(KacheryP2PError):
    """The daemon cannot listen on a port (taken, or not allowed): not bad input, so exit 1."""

    def __init__(self, message: str, kind: str = "udp") -> None:
        super().__init__(message)
        self.kind = kind  # "udp" (the QUIC port) or "control" (the control endpoint)
