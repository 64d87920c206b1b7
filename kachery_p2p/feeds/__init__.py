"""Feeds: signed append-only logs (subfeeds) owned by an Ed25519 key, as in the original kachery-p2p.

    names     subfeed names and hashes, feed:// URIs, limits (no crypto: the client imports it)
    signing   feed keys, signed messages chained by number and previous signature, log verification
    access    per-subfeed access rules ({"rules": [{"nodeId", "write"}]})
    store     SQLite persistence in the config dir (feeds.db, 0600: it holds the feeds' private keys)
"""
