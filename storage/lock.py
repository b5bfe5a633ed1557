"""The training lock: one training run at a time per FLYWHEEL_HOME.

An OS file lock (`filelock`, flock on POSIX) rather than a pid file: the kernel drops it when
the process that holds it dies, however it dies, so a crashed run never holds it forever.
"""

from contextlib import contextmanager
from typing import Iterator

from filelock import FileLock, Timeout

from storage.home import Home


class Busy(Exception):
    """Another training run holds the lock."""


def _lock(home: Home) -> FileLock:
    return FileLock(str(home.root / "training.lock"), thread_local=False)


@contextmanager
def training_lock(home: Home) -> Iterator[None]:
    """Hold the lock for the duration; raises Busy at once if another process holds it."""
    lock = _lock(home)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Busy("another training run is in progress (it holds "
                   f"{home.root / 'training.lock'}); try again when it has finished") from None
    try:
        yield
    finally:
        lock.release()


def training_in_progress(home: Home) -> bool:
    """True while some process holds the training lock (a run marked running without it
    was interrupted)."""
    lock = _lock(home)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
