"""Resident memory of processes, from ``/proc`` (Linux; elsewhere every figure is ``None``).

``peak_rss_bytes`` is the kernel's high-water mark (``VmHWM``); ``reset_peak_rss`` sets it back to the
current RSS (writing ``5`` to ``/proc/<pid>/clear_refs``), so a long-lived process (a Ray worker that runs
many tasks) can measure the peak of one piece of work.
"""

from __future__ import annotations

import os


def _status_kib(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes(pid: int | str = "self") -> int | None:
    """Current resident set size of ``pid`` (``VmRSS``)."""
    kib = _status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """Peak resident set size of ``pid`` since it started or since :func:`reset_peak_rss` (``VmHWM``)."""
    kib = _status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Set ``pid``'s peak RSS back to its current RSS; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)
