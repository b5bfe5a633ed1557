"""Everything Flywheel keeps on disk: the SQLite database, the adapter registry, model caches.

`storage` imports nothing from `assistant` or `trainer`; both of them reach the disk only
through the functions re-exported here.
"""

from storage.db import init_db, open_db
from storage.home import Home, folder_atomically, write_atomic
from storage.migrations import SCHEMA_VERSION

# The name the bare base model (no adapter) goes by wherever versions are named: the review
# queue's adapter filter, the plots' series, the gate's figures. Stored answers say it with
# adapter_id NULL. (The engine's "__base__" is PEFT's own name for it, not ours.)
BASE = "base"

__all__ = ["BASE", "Home", "write_atomic", "folder_atomically", "open_db", "init_db",
           "SCHEMA_VERSION"]
