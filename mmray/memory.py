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


def rss_parts_bytes(pid: int | str = "self") -> dict[str, int | None]:
    """Current RSS split into ``anon`` (the process's own heap) and ``shmem`` (shared memory it has touched,
    e.g. Ray's object store mapped into a worker or the driver: counted in RSS, owned by the store)."""
    out = {}
    for key, field in (("anon", "RssAnon"), ("shmem", "RssShmem")):
        kib = _status_kib(pid, field)
        out[key] = None if kib is None else kib * 1024
    return out


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


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children, ...)."""
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def process_role(pid: int, root: int) -> str:
    """``driver`` (the root), ``worker: <task>`` for Ray workers, ``ray: <service>`` for Ray's own processes."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "gone"
    if cmd.startswith("ray::"):
        return "worker: " + cmd[5:].split(" ")[0]
    if "default_worker.py" in cmd:
        return "worker: starting"
    for service in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "plasma"):
        if service in cmd:
            return f"ray: {service}"
    return "other: " + os.path.basename(cmd.split(" ")[0]) if cmd else "other"


class TreePeaks:
    """Watch a process tree (a command and every process it starts, e.g. a local Ray's workers) and keep each
    process's peak RSS (``VmHWM``) and the roles it had (a Ray worker runs many tasks).

    ``poll()`` once, or ``start()``/``stop()`` a background thread polling every ``interval_s``.
    """

    def __init__(self, root_pid: int, *, interval_s: float = 0.5):
        import threading

        self.root, self.interval_s = root_pid, interval_s
        self.procs: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        for pid in descendants(self.root):
            hwm = peak_rss_bytes(pid)
            if hwm is None:
                continue
            rec = self.procs.setdefault(pid, {"pid": pid, "peak_rss_bytes": 0, "peak_anon_bytes": 0,
                                              "peak_shmem_bytes": 0, "roles": set()})
            rec["peak_rss_bytes"] = max(rec["peak_rss_bytes"], hwm)
            parts = rss_parts_bytes(pid)  # sampled: peaks between polls can be missed, unlike VmHWM
            rec["peak_anon_bytes"] = max(rec["peak_anon_bytes"], parts["anon"] or 0)
            rec["peak_shmem_bytes"] = max(rec["peak_shmem_bytes"], parts["shmem"] or 0)
            role = process_role(pid, self.root)
            if role not in ("gone", "worker: IDLE", "worker: starting") or not rec["roles"]:
                rec["roles"].add(role)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def start(self) -> TreePeaks:
        self._thread.start()
        return self

    def stop(self) -> TreePeaks:
        self._stop.set()
        self._thread.join()
        return self

    def table(self) -> list[dict]:
        """One dict per process: pid, peak_rss_mib (VmHWM), peak_anon_mib / peak_shmem_mib (largest sampled
        anonymous and shared-memory parts), roles (sorted), kind (driver / worker / ray / other)."""
        rows = []
        for rec in self.procs.values():
            roles = sorted(rec["roles"] - {"worker: IDLE", "worker: starting"}) or sorted(rec["roles"])
            kind = roles[0].split(":")[0] if roles else "other"
            rows.append({"pid": rec["pid"], "peak_rss_mib": mib(rec["peak_rss_bytes"]),
                         "peak_anon_mib": mib(rec["peak_anon_bytes"]), "peak_shmem_mib": mib(rec["peak_shmem_bytes"]),
                         "roles": roles, "kind": kind})
        return sorted(rows, key=lambda r: -r["peak_rss_mib"])
