"""A ``mmray`` command as a subprocess that a drill SIGKILLs at a chosen point of its progress.

The command runs in its own process group (its embedded Ray's GCS and raylet
start in that group; Ray's worker processes start groups of their own). Every
process of one run carries ``MMRAY_DRILL_RUN=<tag>`` in its environment
(inherited by Ray's workers), which is how :func:`processes_of` finds what is
left of a run after the kill.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

TAG_VAR = "MMRAY_DRILL_RUN"


def mmray_command() -> list[str]:
    script = Path(sys.executable).with_name("mmray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mmray.cli"]


def processes_of(tag: str) -> list[int]:
    """Pids of live processes whose environment holds ``MMRAY_DRILL_RUN=tag`` (zombies excluded)."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@dataclass
class Lingering:
    """What was left of a run after its process group was killed."""

    at_kill: int  # processes of the run outside the killed group, right after the kill
    exited_in_s: float | None  # how long until they had all exited on their own (None: they did not)
    killed: list[str] = field(default_factory=list)  # "pid cmdline" of those the drill had to SIGKILL


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


class CommandRun:
    """``mmray ARGS`` in its own session, output read line by line (with arrival times)."""

    def __init__(self, args: list[str], *, log: Path, env: dict[str, str]):
        self.tag = uuid.uuid4().hex
        self.log = log
        self.lines: list[tuple[float, str]] = []
        self._queue: queue.Queue = queue.Queue()
        full_env = {**env, TAG_VAR: self.tag, "PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*mmray_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=full_env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                item = (time.monotonic(), line.rstrip("\n"))
                self.lines.append(item)
                self._queue.put(item)
        self._queue.put(None)

    def next_line(self, timeout_s: float) -> tuple[float, str] | None:
        """The next output line; ``None`` at the end of the output; raises ``queue.Empty`` on timeout."""
        return self._queue.get(timeout=max(timeout_s, 0.0))

    def kill(self, *, linger_wait_s: float = 30.0) -> Lingering:
        """SIGKILL the command's process group, then wait for (and at last SIGKILL) the rest of its run."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        at_kill = left = processes_of(self.tag)
        start = time.monotonic()
        while left and time.monotonic() - start < linger_wait_s:
            time.sleep(0.25)
            left = processes_of(self.tag)
        killed = []
        for pid in left:  # ours: started by the command we started, found by our tag
            killed.append(f"{pid} {_cmdline(pid)}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return Lingering(at_kill=len(at_kill), exited_in_s=None if left else time.monotonic() - start,
                         killed=killed)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(linger_wait_s=0)
            raise
        self._reader.join(timeout=30)
        return code

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def clean_env() -> dict[str, str]:
    """This process's environment without what would send the command elsewhere (a cluster, a registry)."""
    drop = {"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MMRAY_SERVE_TOKEN", "MMRAY_PSEUDONYM_KEY",
            TAG_VAR}
    return {k: v for k, v in os.environ.items() if k not in drop}

