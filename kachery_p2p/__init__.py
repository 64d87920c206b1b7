"""kachery-p2p: share content-addressed files between your computers.

    import kachery_p2p as kp
    uri = kp.store_file("data.bin")
    path = kp.load_file(uri)      # None when no peer has it

All functions talk to the local daemon (``kachery-p2p-start-daemon``); without one they raise
``DaemonNotRunningError``.
"""

from .client.api import (
    find_file,
    get_channels,
    get_node_id,
    get_node_info,
    get_peers,
    iter_bytes,
    join_channel,
    leave_channel,
    load_bytes,
    load_file,
    load_json,
    load_text,
    stop_daemon,
    store_bytes,
    store_file,
    store_json,
    store_text,
)
from .client.feeds import (
    Feed,
    Subfeed,
    create_feed,
    delete_feed,
    get_feed_id,
    list_feeds,
    load_feed,
    load_subfeed,
    watch_for_new_messages,
)
from .errors import (
    DaemonAuthError,
    DaemonError,
    DaemonNotRunningError,
    FeedPermissionError,
    InvalidUriError,
    KacheryP2PError,
    NotFoundError,
    StoreError,
    UsageError,
    VerificationError,
)

__version__ = "0.9.0"

__all__ = [
    "DaemonAuthError",
    "DaemonError",
    "DaemonNotRunningError",
    "Feed",
    "FeedPermissionError",
    "InvalidUriError",
    "KacheryP2PError",
    "NotFoundError",
    "StoreError",
    "Subfeed",
    "UsageError",
    "VerificationError",
    "__version__",
    "create_feed",
    "delete_feed",
    "find_file",
    "get_channels",
    "get_feed_id",
    "get_node_id",
    "get_node_info",
    "get_peers",
    "iter_bytes",
    "join_channel",
    "leave_channel",
    "list_feeds",
    "load_bytes",
    "load_feed",
    "load_file",
    "load_json",
    "load_subfeed",
    "load_text",
    "stop_daemon",
    "store_bytes",
    "store_file",
    "store_json",
    "store_text",
    "watch_for_new_messages",
]
