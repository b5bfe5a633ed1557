"""Hot swap: notice a newly promoted adapter in the database and swap it into the engine.

The trainer runs in another process and shares only FLYWHEEL_HOME, so promotion is a row;
this thread polls for it, and a request for the default adapter that finds another one
promoted swaps it in at once (`catch_up`) instead of waiting for the next poll. The swap
itself is a job on the engine's worker (load beside the old adapter, smoke-test, switch),
so requests in flight finish on the adapter they began with.
"""

import logging
import threading
from pathlib import Path

from assistant.inference import EngineUnavailable, InferenceEngine
from storage import Home, adapters, open_db

log = logging.getLogger("flywheel.swap")


class AdapterWatcher(threading.Thread):
    def __init__(self, engine: InferenceEngine, home: Home, interval: float = 0.5):
        super().__init__(name="flywheel-adapter-watcher", daemon=True)
        self.engine = engine
        self.home = home
        self.interval = interval
        self._stopping = threading.Event()
        self._checking = threading.Lock()  # one check at a time: the poll's or a request's

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.check()
            except Exception:
                log.exception("adapter check failed")
            self._stopping.wait(self.interval)

    def stop(self, timeout: float = 60) -> None:
        """Stop polling, and wait for a swap in progress to end (an engine closed under it
        would refuse the adapter, and that would be recorded)."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        if self._checking.acquire(timeout=timeout):  # a request's catch-up, too
            self._checking.release()

    def catch_up(self, active_id: str | None) -> None:
        """A request found `active_id` active in the database. If the engine serves another,
        swap now on the caller's thread (the request then waits for the swap, as it would
        behind a swap already queued) rather than answer on the old adapter until the next
        poll: an answer that begins after a promotion's commit comes from the new adapter.
        A refused adapter costs one more read and changes nothing."""
        if active_id != self.engine.active_adapter:
            self.check()

    def check(self) -> str | None:
        """Swap to the adapter the database calls active, if it differs from the served one.
        Once stopping, nothing: the engine may be closing, and a swap it refused for that
        would be recorded as the adapter's fault."""
        with self._checking:  # a second caller finds the swap done and returns
            if self._stopping.is_set():
                return self.engine.active_adapter
            return self._check()

    def _check(self) -> str | None:
        with open_db(self.home, keep=True) as db:  # polled often: one kept connection
            wanted = adapters.active(db)
            refused = adapters.refused_ids(db)
        wanted_id = wanted["id"] if wanted else None
        if wanted_id == self.engine.active_adapter or wanted_id in refused:
            return self.engine.active_adapter
        if wanted is None:
            self.engine.deactivate().result()
            log.warning("no active adapter: serving the base model")
            return None
        try:
            if wanted["base_model"] != self.engine.base_name:
                raise ValueError(f"trained on {wanted['base_model']}, "
                                 f"but this server serves {self.engine.base_name}")
            self.engine.activate(wanted_id, Path(wanted["path"])).result()
        except EngineUnavailable as exc:  # the inference server is down: try again next time
            log.warning("cannot swap in adapter %s now: %s", wanted_id, exc)
            return self.engine.active_adapter
        except Exception as exc:
            self._record(wanted_id, "refused", f"{type(exc).__name__}: {exc}")
            log.error("refusing adapter %s: %s; still serving %s", wanted_id, exc,
                      self.engine.active_adapter or "the base model")
            return self.engine.active_adapter
        self._record(wanted_id, "served")
        log.warning("swapped in adapter %s", wanted_id)
        return wanted_id

    def _record(self, adapter_id: str, event: str, detail: str = "") -> None:
        with open_db(self.home) as db:
            adapters.record_event(db, adapter_id, event, detail[:2000])
