"""Fair shares: request rates and concurrent answers per user, sign-in attempts per account
and per address, and a bound on concurrent password hashing.

Rates use the `limits` library (moving windows, in memory: one server process holds them;
a restart forgets them, which only ever lets a caller in sooner). A refusal is a
`Refused` that names the limit and says when to come back; the API turns it into a 429 with
`Retry-After`, the page into a message.

The local owner (no users, loopback only) is one person on their own machine: they are not
throttled.
"""

import math
import threading
import time
from contextlib import contextmanager

from limits import RateLimitItemPerMinute, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from assistant.config import ThrottleConfig


class Refused(Exception):
    """Too many of something; `retry_after` seconds until it is allowed again."""

    def __init__(self, message: str, retry_after: int, status: int = 429):
        super().__init__(message)
        self.retry_after, self.status = retry_after, status


class Throttle:
    def __init__(self, config: ThrottleConfig):
        self.config = config
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_minute = RateLimitItemPerMinute(config.requests_per_minute)
        self._per_account = parse(config.sign_in_failures_per_account)
        self._per_address = parse(config.sign_in_failures_per_address)
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()
        self._hashing = threading.BoundedSemaphore(config.concurrent_password_checks)
        self.hashing_now = self.hashing_peak = 0  # password checks running; the most at once

    # ---- chat -----------------------------------------------------------------------------

    def admit(self, user_id: int | None):
        """Count one chat request for `user_id` (None: the local owner, never throttled).
        Returns a function to call when its answer ends; raises Refused."""
        if user_id is None:
            return lambda: None
        key = str(user_id)
        with self._lock:
            if self._streams.get(key, 0) >= self.config.streams_per_user:
                raise Refused(f"you already have {self.config.streams_per_user} answers running "
                              "(streams_per_user); wait for one to finish", 1)
            if not self._limiter.hit(self._per_minute, "chat", key):
                raise Refused(f"more than {self.config.requests_per_minute} requests a minute "
                              "(requests_per_minute)", self._wait(self._per_minute, "chat", key))
            self._streams[key] = self._streams.get(key, 0) + 1
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._lock:
                    self._streams[key] -= 1
        return release

    # ---- sign-in --------------------------------------------------------------------------

    def check_sign_in(self, account: str, address: str) -> None:
        """Refuse before any hashing when this account or address failed too often."""
        for item, scope, key, what in ((self._per_account, "account", account.lower(),
                                        "sign_in_failures_per_account"),
                                       (self._per_address, "address", address,
                                        "sign_in_failures_per_address")):
            if not self._limiter.test(item, scope, key):
                raise Refused(f"too many failed sign-ins ({what}: {item}); try again later",
                              self._wait(item, scope, key))

    def failed_sign_in(self, account: str, address: str) -> None:
        self._limiter.hit(self._per_account, "account", account.lower())
        self._limiter.hit(self._per_address, "address", address)

    @contextmanager
    def hashing(self):
        """Hold one of the password-check slots; Refused (503) when all stay busy for 10 s."""
        if not self._hashing.acquire(timeout=10):
            raise Refused("too many sign-ins at once (concurrent_password_checks); try again "
                          "in a moment", 2, status=503)
        with self._lock:
            self.hashing_now += 1
            self.hashing_peak = max(self.hashing_peak, self.hashing_now)
        try:
            yield
        finally:
            with self._lock:
                self.hashing_now -= 1
            self._hashing.release()

    def _wait(self, item, *identifiers) -> int:
        reset = self._limiter.get_window_stats(item, *identifiers).reset_time
        return max(1, math.ceil(reset - time.time()))
