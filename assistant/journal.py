"""Writes the text of running answers to `partial_answers` from a background thread, once
every `interval` seconds for those that grew, in one transaction. The engine's worker never
writes (a slow disk must not stall a batch); a crash loses at most `interval` seconds of text.
"""

import logging
import threading

from storage import Home, open_db, partials

log = logging.getLogger("flywheel.journal")


class Journal:
    def __init__(self, home: Home, interval: float = 1.0):
        self.home, self.interval = home, interval
        self._streams: dict[str, object] = {}  # answer id -> engine.Stream
        self._written: dict[str, str] = {}     # answer id -> text last written
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.writes = 0  # transactions so far, for the load bench
        self._thread = threading.Thread(target=self._run, name="flywheel-journal", daemon=True)

    def start(self) -> "Journal":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def track(self, answer_id: str, stream) -> None:
        with self._lock:
            if stream.result is None and stream.error is None:  # else it ended already
                self._streams[answer_id] = stream

    def forget(self, answer_id: str) -> None:
        with self._lock:
            self._streams.pop(answer_id, None)
            self._written.pop(answer_id, None)

    def flush(self) -> int:
        """Write every running answer whose text changed; returns how many."""
        with self._lock:
            grown = [(answer_id, stream.partial, stream.adapter_id)
                     for answer_id, stream in self._streams.items()
                     if stream.partial != self._written.get(answer_id, "")]
        if not grown:
            return 0
        with open_db(self.home) as db:
            partials.write_many(db, grown)
        with self._lock:
            for answer_id, text, _ in grown:
                if answer_id in self._streams:
                    self._written[answer_id] = text
        self.writes += 1
        return len(grown)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.flush()
            except Exception:  # a full disk now must not end the journal for good
                log.exception("writing partial answers failed")
