"""A per-slide progress log for the tile pipeline.

Planning tasks report how many rows (tiles + regions) each slide has, or that
it failed; the encoder actors report the rows of every batch they embedded;
the sink reports rows written and failures.  A small actor (no CPU reserved)
counts, and a thread on the driver logs a line every ``interval_s`` seconds::

    wsi: 12/40 slides planned, 9 complete, 1 failed; 8,421/15,230 tiles+regions encoded (512 /s, ETA 0:00:13),
    6,144 written

The rate is over the last ``window_s`` seconds; the ETA is the rows not yet
through the encoder over that rate.  While some slides are not planned yet,
the total is extrapolated from the planned ones (ETA shown as ``~``).  Calls
into the actor are fire-and-forget (one per encoder batch), so the pipeline
never waits on it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import ray

log = logging.getLogger("mmray.ingest.wsi")


class ProgressCounts:
    """The counts behind the line (runs as a Ray actor, :data:`_Counter`)."""

    def __init__(self):
        self.planned: dict[str, int] = {}
        self.through: dict[str, list[int]] = {}  # slide -> [rows encoded, rows that reached the encoder failed]
        self.written: dict[str, int] = {}
        self.failed: set[str] = set()

    def planned_rows(self, slide: str, n: int, error: str = "") -> None:
        self.planned[slide] = n
        if error:
            self.failed.add(slide)

    def encoded_rows(self, counts: dict) -> None:
        for slide, (ok, bad) in counts.items():
            seen = self.through.setdefault(slide, [0, 0])
            seen[0] += ok
            seen[1] += bad

    def written_rows(self, rows: dict, failures: dict) -> None:
        for slide, n in rows.items():
            self.written[slide] = self.written.get(slide, 0) + n
        self.failed.update(failures)

    def snapshot(self) -> dict:
        done = sum(1 for s, n in self.planned.items() if s not in self.failed and self.written.get(s, 0) >= n)
        # rows of planned slides that went through the encoder, embedded or not (a slide that failed mid-way
        # has rows that never will be embedded; they still count as done for the ETA); a batch that Ray ran
        # twice (a retried task) never pushes a slide past its plan
        through = sum(min(n, sum(self.through.get(s, (0, 0)))) for s, n in self.planned.items())
        encoded = sum(min(ok, self.planned.get(s, ok)) for s, (ok, _) in self.through.items())
        return {"planned": len(self.planned), "complete": done, "failed": len(self.failed),
                "rows_planned": sum(self.planned.values()), "rows_through": through, "rows_encoded": encoded,
                "rows_written": sum(self.written.values())}


_Counter = ray.remote(num_cpus=0)(ProgressCounts)


class ProgressHandle:
    """What stages get: ``planned.remote(slide, n, error)``, ``encoded.remote({slide: [ok, failed]})``
    and ``written.remote(rows, failures)``."""

    def __init__(self, actor):
        self._actor = actor
        self.planned = actor.planned_rows
        self.encoded = actor.encoded_rows
        self.written = actor.written_rows

    def __reduce__(self):
        return (ProgressHandle, (self._actor,))


def estimated_total(*, rows_planned: int, slides_planned: int, n_slides: int) -> float | None:
    """Rows all ``n_slides`` will have: exact once all are planned, else the planned ones' mean times
    ``n_slides``; None before any is planned."""
    if slides_planned >= n_slides:
        return float(rows_planned)
    if slides_planned == 0:
        return None
    return rows_planned / slides_planned * n_slides


def rate_and_eta(samples, *, total: float | None, window_s: float = 60.0) -> tuple[float, float | None]:
    """``(rows/s, seconds left)`` from ``(time_s, rows done)`` samples, oldest first.

    The rate is over the span from the oldest sample at most ``window_s`` before the newest (at least the
    two newest samples) to the newest. Seconds left: ``(total - done) / rate``; 0 when done; None when it
    cannot be told (no total, or no progress in the window).
    """
    if len(samples) < 2:
        return 0.0, (0.0 if total is not None and samples and samples[-1][1] >= total else None)
    t1, n1 = samples[-1]
    t0, n0 = next(((t, n) for t, n in samples[:-1] if t1 - t <= window_s), samples[-2])
    rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
    if total is None:
        return rate, None
    left = max(total - n1, 0.0)
    if left == 0:
        return rate, 0.0
    return rate, (left / rate if rate > 0 else None)


def format_eta(seconds: float | None, *, estimated: bool = False) -> str:
    """``0:01:05``, ``~0:01:05`` for an extrapolated total, ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{'~' if estimated else ''}{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLog:
    """Context manager: starts the counter actor and the logging thread; yields a :class:`ProgressHandle`."""

    def __init__(self, *, n_slides: int, interval_s: float = 10.0, window_s: float = 60.0, label: str = "wsi"):
        self.n_slides, self.interval_s, self.window_s, self.label = n_slides, interval_s, window_s, label
        self._stop = threading.Event()
        self._actor = None
        self._thread: threading.Thread | None = None
        self._samples: collections.deque = collections.deque(maxlen=10_000)
        self.last_line = ""

    def __enter__(self) -> ProgressHandle | None:
        if self.interval_s <= 0:
            return None
        self._actor = _Counter.remote()
        self._samples.append((time.perf_counter(), 0))
        self._thread = threading.Thread(target=self._loop, name="mmray-wsi-progress", daemon=True)
        self._thread.start()
        return ProgressHandle(self._actor)

    def snapshot(self) -> dict:
        return ray.get(self._actor.snapshot.remote(), timeout=30)

    def line(self, s: dict | None = None) -> str:
        s = s or self.snapshot()
        self._samples.append((time.perf_counter(), s["rows_through"]))
        total = estimated_total(rows_planned=s["rows_planned"], slides_planned=s["planned"], n_slides=self.n_slides)
        rate, eta = rate_and_eta(list(self._samples), total=total, window_s=self.window_s)
        self.last_line = (
            f"{self.label}: {s['planned']}/{self.n_slides} slides planned, {s['complete']} complete, "
            f"{s['failed']} failed; {s['rows_encoded']:,}/{s['rows_planned']:,} tiles+regions encoded "
            f"({rate:,.0f} /s, ETA {format_eta(eta, estimated=s['planned'] < self.n_slides)}), "
            f"{s['rows_written']:,} written")
        return self.last_line

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                log.info("%s", self.line())
            except Exception as e:  # progress must never break the job
                log.debug("progress unavailable: %s", e)

    def _settled(self, wait_s: float) -> dict:
        """A snapshot once the reports still in flight (fire-and-forget) have arrived, or after ``wait_s``."""
        deadline = time.perf_counter() + wait_s
        while True:
            s = self.snapshot()
            if (s["planned"] >= self.n_slides and s["rows_through"] >= s["rows_planned"]) \
                    or time.perf_counter() > deadline:
                return s
            time.sleep(0.05)

    def __exit__(self, exc_type, *exc) -> None:
        if self._actor is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            log.info("%s", self.line(self._settled(0.0 if exc_type else 5.0)))
        except Exception:
            pass
        ray.kill(self._actor)
