"""Progress lines for driver-side loops over many items (CT studies, signature models, ...).

One line every ``interval_s`` seconds and one at the end, instead of a line per item::

    ct: 40/120 studies done, 1 failed (3.2 /s, ETA 0:00:25)

Failures are logged one by one (at WARNING) by the callers: those are the lines a person must see.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable


class RateLog:
    """Counts finished items and logs a rate/ETA line at most every ``interval_s`` seconds (and the last one)."""

    def __init__(self, log: logging.Logger, what: str, total: int, *, unit: str = "items",
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._log, self._what, self._unit, self.total = log, what, unit, total
        self._interval, self._clock = interval_s, clock
        self.done = self.failed = 0
        self._start = self._last = clock()

    def tick(self, *, failed: bool = False) -> None:
        """One item finished (``failed``: it failed)."""
        self.done += 1
        self.failed += int(failed)
        now = self._clock()
        if self.done >= self.total or now - self._last >= self._interval:
            self._last = now
            self._log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((self._clock() if now is None else now) - self._start, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = str(dt.timedelta(seconds=round(left / rate))) if rate > 0 else "?"
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"{self._what}: {self.done}/{self.total} {self._unit} done{failed} "
                f"({rate:.1f} /s, ETA {eta if left else '0:00:00'})")
