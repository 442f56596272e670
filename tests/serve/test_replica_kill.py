"""Drill: SIGKILL a Serve replica under load.

The real application (two registered signature models, two replicas) answers a bounded request loop
on 127.0.0.1 from four client threads.  Once both replicas have answered, the test SIGKILLs one
replica's process and keeps the load on: requests fail over to the live replica, Serve starts a new
one, and every answer (before, during and after) carries the same risk scores.  Reported: the error
count, the time from the kill to the last failed request, and to Serve running two replicas again.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest
import ray
import requests
from ray import serve
from ray_drills import alive, ray_processes, sigkill, wait_for

from mmray.config import load_config
from mmray.registry.signatures import SignaturesConfig, run_signatures
from mmray.serve.app import DEPLOYMENT, start_serve
from mmray.serve.config import ServeConfig
from mmray.store import FeatureStore
from mmray.synth.survival_store import write_survival_cohort, write_survival_groups

pytestmark = [pytest.mark.integration, pytest.mark.drill]
SIGS = ["SIG_IMMUNE_CYTOLYTIC", "SIG_PROLIFERATION"]
APP = "mmray"
REPLICAS = 2
CLIENTS = 4
MAX_REQUESTS = 20_000  # the loop's bound; it normally stops well before (see AFTER_RECOVERY_S)
AFTER_RECOVERY_S = 5.0  # load kept on after Serve is back to REPLICAS, to see that it stays healthy
MAX_LOOP_S = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("replica_kill")
    cohort = write_survival_cohort(root / "cohort", patients=60, seed=2)
    store = str(root / "store")
    write_survival_groups(cohort, store)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MMRAY_SERVE_TOKEN", raising=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = load_config(SignaturesConfig, None, [f"cohort={cohort}", f"store={store}", f"only=[{','.join(SIGS)}]",
                                                   "n_boot=0", "all_genes=false", "registry.gate.threshold=0.0"])
        assert run_signatures(cfg).counts()["registered"] == len(SIGS)
        scfg = load_config(ServeConfig, None, [f"store={store}", f"port={_free_port()}", f"num_replicas={REPLICAS}",
                                               "replica_num_cpus=0.5", "model_prefix=sig__", f"app_name={APP}"])
        url = start_serve(scfg)
        wait_for(lambda: _running(), timeout_s=120, what=f"{REPLICAS} running replicas")
        yield {"url": url, "store": store}
    finally:
        serve.shutdown()
        ray.shutdown()
        mp.undo()


def _running() -> int:
    """Replicas Serve reports RUNNING (0 while the application is not deployed)."""
    apps = serve.status().applications
    if APP not in apps or DEPLOYMENT not in apps[APP].deployments:
        return 0
    states = apps[APP].deployments[DEPLOYMENT].replica_states
    return int(sum(n for s, n in states.items() if str(getattr(s, "value", s)) == "RUNNING"))


def _replica_pids() -> list[int]:
    return sorted(ray_processes(f"ray::ServeReplica:{APP}:{DEPLOYMENT}"))


@dataclass
class Call:
    start: float
    end: float
    ok: bool
    status: int  # 0: no HTTP answer (connection reset, timeout)
    replica_risk: tuple | None = None
    error: str = ""


class Load:
    """``CLIENTS`` threads POSTing predictions until :meth:`stop` or ``MAX_REQUESTS`` in all."""

    def __init__(self, url: str, bodies: list[dict]):
        self.url, self.bodies = url, bodies
        self.calls: list[Call] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, i: int) -> None:
        with requests.Session() as s:
            n = 0
            while not self._stop.is_set() and len(self.calls) < MAX_REQUESTS:
                body = self.bodies[(i + n) % len(self.bodies)]
                n += 1
                t0 = time.monotonic()
                try:
                    r = s.post(f"{self.url}/v1/predict", json=body, timeout=30)
                    ok = r.status_code == 200
                    risk = (body["model"], tuple(r.json()["risk"])) if ok else None
                    call = Call(t0, time.monotonic(), ok, r.status_code, risk, "" if ok else r.text[:200])
                except requests.RequestException as e:
                    call = Call(t0, time.monotonic(), False, 0, None, f"{type(e).__name__}: {e}"[:200])
                with self._lock:
                    self.calls.append(call)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def ok_since(self, t: float) -> int:
        with self._lock:
            return sum(c.ok for c in self.calls if c.start >= t)


def test_sigkill_of_a_replica_under_load_fails_over_and_serve_restores_the_replica(app):
    t_test = time.monotonic()
    expr = FeatureStore(app["store"]).read_table("expression")
    rows = expr.drop(columns=["patient_id", "event_time"]).head(3).to_dict(orient="records")
    # the model named in the body: no multiplexing header, so the proxy spreads requests over both replicas
    bodies = [{"model": f"sig__{s}", "instances": rows} for s in SIGS]
    expected = {}
    for b in bodies:
        r = requests.post(f"{app['url']}/v1/predict", json=b, timeout=60)
        assert r.status_code == 200, r.text
        expected[b["model"]] = tuple(r.json()["risk"])
    before = _replica_pids()
    assert len(before) == REPLICAS

    load = Load(app["url"], bodies)
    load.start()
    t_begin = time.monotonic()
    try:
        wait_for(lambda: load.ok_since(t_begin) >= 40, timeout_s=120, what="40 successful requests before the kill")
        victim = before[0]
        t_kill = sigkill(victim)
        back = wait_for(lambda: _running() == REPLICAS and len(pids := _replica_pids()) == REPLICAS
                        and victim not in pids and pids, timeout_s=MAX_LOOP_S,
                        what=f"Serve to run {REPLICAS} replicas again after the kill")
        t_back = time.monotonic()
        time.sleep(AFTER_RECOVERY_S)
    finally:
        load.stop()
    calls = sorted(load.calls, key=lambda c: c.start)
    after = [c for c in calls if c.end >= t_kill]  # everything that could have met the dead replica
    failed = [c for c in after if not c.ok]
    last_failed = max((c.end for c in failed), default=t_kill)
    tail = [c for c in calls if c.start > last_failed]

    assert not [c for c in calls if c.end < t_kill and not c.ok]  # healthy before the kill
    assert not alive(victim) and len(back) == REPLICAS and set(back) != set(before)
    # fail-over: the live replica kept answering while the dead one was replaced
    ok_during = sum(c.ok for c in after if c.start < t_back)
    assert ok_during >= 10
    assert len(failed) <= max(CLIENTS * 2, 0.05 * len(after)), [c.error for c in failed[:5]]
    # after the last failure: a long healthy run, on the restored replica set too
    assert len(tail) >= 50 and all(c.ok for c in tail)
    assert any(c.start > t_back for c in tail)
    for c in calls:  # every answer is the same prediction, whichever replica gave it
        if c.ok:
            assert c.replica_risk[1] == expected[c.replica_risk[0]]
    statuses = sorted({c.status for c in failed})
    errors = (f"{len(failed)} failed (HTTP status {statuses}, 0: no answer; {[c.error[:80] for c in failed[:2]]}), "
              f"the last {last_failed - t_kill:.2f} s after the kill" if failed else "none failed")
    print(f"\nserve drill: {REPLICAS} replicas, {CLIENTS} clients; killed replica pid {victim}; {len(calls)} requests "
          f"({len(after)} from the kill on): {errors}; {ok_during} succeeded while a replica was down; "
          f"{REPLICAS} replicas running again {t_back - t_kill:.1f} s after the kill (new pid "
          f"{sorted(set(back) - set(before))}); {len(tail)} successes in a row since the last failure; "
          f"test {time.monotonic() - t_test:.0f} s")
