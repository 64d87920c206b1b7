"""Benchmarks for kachery-p2p. Run ``python -m bench`` (all) or ``python -m bench NAME [options]``."""
