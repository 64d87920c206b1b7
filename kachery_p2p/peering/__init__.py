"""Sans-IO decisions about peers: who connects to whom and when (``policy``), and which path a
connection's datagrams take (``path``). No sockets, no clock: ``now`` is passed in."""
