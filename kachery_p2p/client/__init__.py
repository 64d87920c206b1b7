"""Client of the local daemon. Must not import aioquic (keeps ``import kachery_p2p`` light)."""
