"""Stable buckets: a key (a conversation id) lands at the same point of [0, 1] on every
machine and every run, so a share of keys (an A/B arm, a validation split) is the same share
of the same keys, and a key never changes side as data grows."""

import hashlib


def position(key: str) -> float:
    """Where `key` falls in [0, 1]: the first 32 bits of its SHA-256."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
