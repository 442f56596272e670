"""A per-slide progress log for the tile pipeline.

Planning tasks report how many rows each slide has, the sink reports rows
written and failures; a small actor (no CPU reserved) counts, and a thread on
the driver logs a line every ``interval_s`` seconds::

    wsi: 12/40 slides planned, 9 complete, 1 failed; 8,421/15,230 tiles+regions embedded (512 /s)

Calls into the actor are fire-and-forget, so the pipeline never waits on it.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

log = logging.getLogger("mmray.ingest.wsi")


@ray.remote(num_cpus=0)
class _Counter:
    def __init__(self):
        self.planned: dict[str, int] = {}
        self.written: dict[str, int] = {}
        self.failed: set[str] = set()

    def planned_rows(self, slide: str, n: int) -> None:
        self.planned[slide] = n

    def written_rows(self, rows: dict, failures: dict) -> None:
        for slide, n in rows.items():
            self.written[slide] = self.written.get(slide, 0) + n
        self.failed.update(failures)

    def snapshot(self) -> dict:
        done = sum(1 for s, n in self.planned.items() if s not in self.failed and self.written.get(s, 0) >= n)
        return {"planned": len(self.planned), "complete": done, "failed": len(self.failed),
                "rows_planned": sum(self.planned.values()), "rows_written": sum(self.written.values())}


class ProgressHandle:
    """What stages get: ``planned.remote(slide, n)`` and ``written.remote(rows, failures)``."""

    def __init__(self, actor):
        self._actor = actor
        self.planned = actor.planned_rows
        self.written = actor.written_rows

    def __reduce__(self):
        return (ProgressHandle, (self._actor,))


class ProgressLog:
    """Context manager: starts the counter actor and the logging thread; yields a :class:`ProgressHandle`."""

    def __init__(self, *, n_slides: int, interval_s: float = 10.0, label: str = "wsi"):
        self.n_slides, self.interval_s, self.label = n_slides, interval_s, label
        self._stop = threading.Event()
        self._actor = None
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> ProgressHandle | None:
        if self.interval_s <= 0:
            return None
        self._actor = _Counter.remote()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="mmray-wsi-progress", daemon=True)
        self._thread.start()
        return ProgressHandle(self._actor)

    def line(self) -> str:
        s = ray.get(self._actor.snapshot.remote(), timeout=30)
        rate = s["rows_written"] / max(time.perf_counter() - self._start, 1e-9)
        return (f"{self.label}: {s['planned']}/{self.n_slides} slides planned, {s['complete']} complete, "
                f"{s['failed']} failed; {s['rows_written']:,}/{s['rows_planned']:,} tiles+regions embedded "
                f"({rate:,.0f} /s)")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                log.info("%s", self.line())
            except Exception as e:  # progress must never break the job
                log.debug("progress unavailable: %s", e)

    def __exit__(self, *exc) -> None:
        if self._actor is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            log.info("%s", self.line())
        except Exception:
            pass
        ray.kill(self._actor)
