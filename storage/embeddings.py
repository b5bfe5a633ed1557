"""A cache of sentence embeddings, so a text is embedded once in its life.

The dataset pipeline embeds every prompt and answer to find near duplicates. all-MiniLM-L6-v2
embeds about 50 to 150 texts a second on two CPU cores: a year of feedback would take hours
every night. With the cache, a nightly run embeds only the feedback that arrived since the
last one.

It is its own SQLite file (`cache/embeddings.db` under FLYWHEEL_HOME), not part of
`flywheel.db`: it can be deleted at any time, and backups leave it out. Keys are SHA-256 of
the model's name and the text; vectors are float16 (768 bytes for 384 dimensions).
"""

import hashlib
import sqlite3
from pathlib import Path
from typing import Callable

import numpy as np

from storage.home import Home

CHUNK = 500  # keys per lookup (SQLite's parameter limit is far above)


def key(model: str, text: str) -> bytes:
    """The cache key of `text` for `model`: SHA-256 of the model's name and the text."""
    return hashlib.sha256(f"{model}\0{text}".encode()).digest()


class EmbeddingCache:
    """Vectors by text, for one embedding model, in `path` (created if missing)."""

    def __init__(self, path: Path, model: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS vectors "
                          "(key BLOB PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID")

    @classmethod
    def for_home(cls, home: Home, model: str) -> "EmbeddingCache":
        """The cache for `model` in `cache/embeddings.db` under `home`."""
        return cls(home.root / "cache" / "embeddings.db", model)

    def get(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those `texts` that have one."""
        keys = {key(self.model, t): t for t in texts}
        found = {}
        items = list(keys)
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            for k, blob in self.conn.execute(
                    f"SELECT key, vector FROM vectors WHERE key IN ({', '.join('?' * len(chunk))})",
                    chunk):
                found[keys[k]] = np.frombuffer(blob, dtype=np.float16)
        return found

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        """Store these vectors (as float16) by text, replacing any cached, in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                [(key(self.model, t), np.asarray(v, dtype=np.float16).tobytes())
                 for t, v in vectors.items()])

    def size(self) -> int:
        """How many vectors the cache holds (for every model). Not `__len__`: callers test
        `if cache:` for "a cache is in use", and an empty cache must still count as one."""
        return self.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        """Close the cache's database connection."""
        self.conn.close()


def cached(embed: Callable[[list[str]], np.ndarray], cache: EmbeddingCache
           ) -> Callable[[list[str]], np.ndarray]:
    """`embed`, reading from and adding to `cache`: only texts never seen are embedded."""
    def embed_with_cache(texts: list[str]) -> np.ndarray:
        known = cache.get(texts)
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            fresh = dict(zip(new, np.asarray(embed(new), dtype=np.float32)))
            cache.put(fresh)
            known.update({t: v.astype(np.float16) for t, v in fresh.items()})
        return np.stack([known[t] for t in texts]).astype(np.float32)
    return embed_with_cache
