"""Hot swap: notice a newly promoted adapter in the database and swap it into the engine.

The trainer runs in another process and shares only FLYWHEEL_HOME, so promotion is a row;
this thread polls for it. The swap itself is a job on the engine's worker (load beside the
old adapter, smoke-test, switch), so requests in flight finish on the adapter they began with.
"""

import logging
import threading
from pathlib import Path

from assistant.engine import Engine
from storage import Home, open_db
from storage import adapters

log = logging.getLogger("flywheel.swap")


class AdapterWatcher(threading.Thread):
    def __init__(self, engine: Engine, home: Home, interval: float = 2.0):
        super().__init__(name="flywheel-adapter-watcher", daemon=True)
        self.engine = engine
        self.home = home
        self.interval = interval
        self.refused: set[str] = set()  # adapters that failed to load; not retried every poll
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:
                log.exception("adapter check failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> str | None:
        """Swap to the adapter the database calls active, if it differs from the served one."""
        with open_db(self.home) as db:
            wanted = adapters.active(db)
        wanted_id = wanted["id"] if wanted else None
        if wanted_id == self.engine.active_adapter or wanted_id in self.refused:
            return self.engine.active_adapter
        if wanted is None:
            self.engine.deactivate().result()
            log.warning("no active adapter: serving the base model")
            return None
        if wanted["base_model"] != self.engine.base_name:
            self.refused.add(wanted_id)
            log.error("refusing adapter %s: trained on %s, serving %s", wanted_id,
                      wanted["base_model"], self.engine.base_name)
            return self.engine.active_adapter
        try:
            self.engine.activate(wanted_id, Path(wanted["path"])).result()
        except Exception as exc:
            self.refused.add(wanted_id)
            log.error("refusing adapter %s: %s; still serving %s", wanted_id, exc,
                      self.engine.active_adapter or "the base model")
            return self.engine.active_adapter
        log.warning("swapped in adapter %s", wanted_id)
        return wanted_id
