"""kachery-p2p: share content-addressed files between your computers.

    import kachery_p2p as kp
    uri = kp.store_file("data.bin")
    path = kp.load_file(uri)      # None when no peer has it

All functions talk to the local daemon (``kachery-p2p-start-daemon``); without one they raise
``DaemonNotRunningError``. With ``KACHERY_OFFLINE_STORAGE_DIR`` set, files are loaded and stored
there with no daemon at all. The original kachery-p2p's API is here too (load_object, load_npy,
load_pkl, link_file, get/set/delete mutables, TemporaryDirectory, p2p=False, ...).
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
    link_file,
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
from .client.local import experimental_config as _experimental_config  # noqa: F401 - the original exported it
from .client.mutables import delete, get, get_string, set
from .client.objects import (
    TemporaryDirectory,
    load_npy,
    load_object,
    load_pkl,
    store_npy,
    store_object,
    store_pkl,
)
from .errors import (
    DaemonAuthError,
    DaemonError,
    DaemonNotRunningError,
    FeedPermissionError,
    InvalidUriError,
    KacheryP2PError,
    LoadFileError,
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
    "LoadFileError",
    "NotFoundError",
    "StoreError",
    "Subfeed",
    "TemporaryDirectory",
    "UsageError",
    "VerificationError",
    "__version__",
    "create_feed",
    "delete",
    "delete_feed",
    "find_file",
    "get",
    "get_channels",
    "get_feed_id",
    "get_node_id",
    "get_node_info",
    "get_peers",
    "get_string",
    "iter_bytes",
    "join_channel",
    "leave_channel",
    "link_file",
    "list_feeds",
    "load_bytes",
    "load_feed",
    "load_file",
    "load_json",
    "load_npy",
    "load_object",
    "load_pkl",
    "load_subfeed",
    "load_text",
    "set",
    "stop_daemon",
    "store_bytes",
    "store_file",
    "store_json",
    "store_npy",
    "store_object",
    "store_pkl",
    "store_text",
    "watch_for_new_messages",
]
