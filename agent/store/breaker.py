"""A circuit breaker: after a failure, skip the dependency for an interval, then let one call try it."""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._open_until: float | None = None
        self.failures = 0

    def allow(self) -> bool:
        """True when a call may go through. While open, one caller per interval gets a trial."""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        self._open_until = now + self.interval_s  # the trial itself; others keep waiting
        return True

    def success(self) -> None:
        self._open_until = None

    def failure(self) -> None:
        self.failures += 1
        self._open_until = self._clock() + self.interval_s
