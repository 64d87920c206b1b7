"""kachery-p2p: share content-addressed files between your computers.

    import kachery_p2p as kp
    uri = kp.store_file("data.bin")
    path = kp.load_file(uri)      # None when no peer has it

All functions talk to the local daemon (``kachery-p2p-start-daemon``); without one they raise
``DaemonNotRunningError``. With ``KACHERY_OFFLINE_STORAGE_DIR`` set, files are loaded and stored
there with no daemon at all. The original kachery-p2p's API is here too (load_object, load_npy,
load_pkl, link_file, get/set/delete mutables, TemporaryDirectory, p2p=False, ...).
"""

# Names are imported when first used (PEP 562): ``import kachery_p2p`` and every command stay light, and
# the daemon, which imports this package too, does not load the client API (http.client, pickle, feeds).
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
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

__version__ = "0.9.0"

# name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "find_file": (".client.api", "find_file"),
    "get_channels": (".client.api", "get_channels"),
    "get_node_id": (".client.api", "get_node_id"),
    "get_node_info": (".client.api", "get_node_info"),
    "get_peers": (".client.api", "get_peers"),
    "iter_bytes": (".client.api", "iter_bytes"),
    "join_channel": (".client.api", "join_channel"),
    "leave_channel": (".client.api", "leave_channel"),
    "link_file": (".client.api", "link_file"),
    "load_bytes": (".client.api", "load_bytes"),
    "load_file": (".client.api", "load_file"),
    "load_json": (".client.api", "load_json"),
    "load_text": (".client.api", "load_text"),
    "stop_daemon": (".client.api", "stop_daemon"),
    "store_bytes": (".client.api", "store_bytes"),
    "store_file": (".client.api", "store_file"),
    "store_json": (".client.api", "store_json"),
    "store_text": (".client.api", "store_text"),
    "Feed": (".client.feeds", "Feed"),
    "Subfeed": (".client.feeds", "Subfeed"),
    "create_feed": (".client.feeds", "create_feed"),
    "delete_feed": (".client.feeds", "delete_feed"),
    "get_feed_id": (".client.feeds", "get_feed_id"),
    "list_feeds": (".client.feeds", "list_feeds"),
    "load_feed": (".client.feeds", "load_feed"),
    "load_subfeed": (".client.feeds", "load_subfeed"),
    "watch_for_new_messages": (".client.feeds", "watch_for_new_messages"),
    "_experimental_config": (".client.local", "experimental_config"),
    "delete": (".client.mutables", "delete"),
    "get": (".client.mutables", "get"),
    "get_string": (".client.mutables", "get_string"),
    "set": (".client.mutables", "set"),
    "TemporaryDirectory": (".client.objects", "TemporaryDirectory"),
    "load_npy": (".client.objects", "load_npy"),
    "load_object": (".client.objects", "load_object"),
    "load_pkl": (".client.objects", "load_pkl"),
    "store_npy": (".client.objects", "store_npy"),
    "store_object": (".client.objects", "store_object"),
    "store_pkl": (".client.objects", "store_pkl"),
}


def __getattr__(name: str) -> object:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(where[0], __name__), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
