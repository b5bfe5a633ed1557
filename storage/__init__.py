"""Everything Flywheel keeps on disk: the SQLite database, the adapter registry, model caches.

`storage` imports nothing from `assistant` or `trainer`; both of them reach the disk only
through the functions re-exported here.
"""

from storage.db import SCHEMA_VERSION, init_db, open_db
from storage.home import Home, folder_atomically, write_atomic

__all__ = ["Home", "write_atomic", "folder_atomically", "open_db", "init_db", "SCHEMA_VERSION"]
