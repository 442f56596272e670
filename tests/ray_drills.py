"""Helpers for the process-kill drills: wait for a condition, find Ray worker processes, SIGKILL them.

Drills kill real processes (``os.kill(pid, SIGKILL)``: no cleanup, no exception in the victim) and
then check what the system did about it.  Everything here is plain polling with a deadline, so a
drill that never reaches its kill point fails with a message saying what it waited for.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def wait_for(cond: Callable[[], Any], *, timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """``cond()``'s first truthy value, polling every ``poll_s``; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sigkill(pid: int, *, timeout_s: float = 30.0) -> float:
    """SIGKILL ``pid`` and wait until it is gone; returns the kill time (``time.monotonic()``)."""
    assert alive(pid), f"process {pid} is not running: nothing to kill"
    t = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), timeout_s=timeout_s, what=f"process {pid} to die after SIGKILL")
    return t


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None while it is missing or half written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def ray_processes(title_prefix: str) -> dict[int, str]:
    """``{pid: title}`` of this test's Ray worker processes whose title starts with ``title_prefix``.

    Ray titles a worker ``ray::<task name>`` while it runs a task (``ray::IDLE`` between tasks) and an
    actor ``ray::<class>`` (``ray::<class>.<method>`` during a call).  Only descendants of this process
    count: the local Ray that ``ray.init`` started here, never another Ray on the same machine.
    """
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline()).strip()
        except psutil.Error:  # gone meanwhile
            continue
        if title.startswith(title_prefix) and alive(p.pid):
            found[p.pid] = title
    return found


class Killer(threading.Thread):
    """In the background: wait until ``pick()`` returns a pid (or ``(pid, info)``), SIGKILL it, record it.

    ``after_kill()`` runs as soon as the victim is gone (to read what it left before a restart
    overwrites it).  After ``join()``: :attr:`pid`, :attr:`info`, :attr:`after`, :attr:`killed_at`
    (monotonic) or :attr:`error` (why it never killed: re-raised by :meth:`check`).
    """

    def __init__(self, pick: Callable[[], Any], *, timeout_s: float, what: str,
                 after_kill: Callable[[], Any] | None = None):
        super().__init__(daemon=True, name=f"killer: {what}")
        self.pick, self.timeout_s, self.what, self.after_kill = pick, timeout_s, what, after_kill
        self.pid: int | None = None
        self.info: Any = None
        self.after: Any = None
        self.killed_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            got = wait_for(self.pick, timeout_s=self.timeout_s, what=self.what)
            self.pid, self.info = got if isinstance(got, tuple) else (got, None)
            self.killed_at = sigkill(self.pid)
            if self.after_kill is not None:
                self.after = self.after_kill()
        except BaseException as e:  # noqa: BLE001  reported to the test by check()
            self.error = e

    def check(self) -> None:
        self.join(timeout=self.timeout_s + 60)
        if self.error is not None:
            raise AssertionError(f"the drill never killed anything: {self.error}") from self.error
        assert self.pid is not None, f"killer for {self.what} still running"
