"""A real local Ray cluster runs the tiny pipeline as a Ray job, submitted the way users submit to EC2.

``ray start --head`` on 127.0.0.1 (free ports, a private temp dir, ``ingest_cpu`` custom resources as the
cluster's ingest nodes offer them), then ``ray job submit --working-dir . --runtime-env
ray_jobs/runtime_env.yaml -- python ray_jobs/pipeline.py --config ray_jobs/configs/pipeline_tiny.yaml ...``,
waiting for SUCCEEDED; then the store, the registry and the cluster's task records are checked.

The cluster is stopped by ending the ``ray start --block`` process this test started (it stops every
process of its node); ``ray stop`` would also stop every other Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from mmray.store import FeatureStore

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # a whole pipeline as a Ray job: ~3 min
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 900
MODELS = ("sig__SIG_PROLIFERATION", "sig__SIG_IMMUNE_CYTOLYTIC", "sig__ALL_GENES", "mmray__early_fusion")


def _auth_mode() -> str:
    """One RAY_AUTH_MODE for the cluster and the CLI: the environment's, else what `ray start` picks.

    Unset, `ray start` turns token auth on when a token exists, but `ray job ...` then sends none.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode:
        return mode
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return "token" if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file() else "disabled"


def _env() -> dict[str, str]:
    """This environment with the venv first on PATH (the job's `python` is the cluster's), no Ray address,
    no MLflow server (the registry is the store's sqlite), one auth mode for server and client."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": _auth_mode()}
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "MMRAY_SERVE_TOKEN"):
        env.pop(var, None)
    return env


def _ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=REPO, env=_env(), capture_output=True, text=True, check=False,
                          timeout=timeout)


def _stop(proc: subprocess.Popen) -> None:
    """End the `ray start --block` process group (its node's processes), then whatever is left of it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers and agents in the session ray start opened
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster(free_ports):
    gcs, dash, client_port, agent_port = free_ports(4)
    temp = tempfile.mkdtemp(prefix="mmray-ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    log = Path(temp) / "ray-start.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client_port}",
           f"--dashboard-agent-listen-port={agent_port}", "--num-cpus=2", "--object-store-memory=1500000000",
           "--resources", json.dumps({"ingest_cpu": 2}), "--disable-usage-stats", f"--temp-dir={temp}"]
    env = {**_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # the job left nothing to drain: stop at once
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{address}/api/version", timeout=2).status_code < 500 and \
                        _ray("job", "list", "--address", address).returncode == 0:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster's job API did not come up in 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield address
    finally:
        _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _job_status(out: subprocess.CompletedProcess) -> str | None:
    """The status `ray job status` printed: "Job 'x' succeeded" (failed, was stopped) or "Status for job 'x': RUNNING"."""
    text = out.stdout + out.stderr
    ended = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", text)
    if ended:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended.group(1)]
    running = re.search(r"Status for job '[^']+': (\w+)", text)
    return running.group(1) if running else None


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory, free_ports):
    """Submit the tiny pipeline and wait for the job to end: ``(status, logs, store, seconds)``."""
    root = tmp_path_factory.mktemp("cluster_job")
    store = root / "store"
    sid = f"mmray-tiny-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    submit = _ray("job", "submit", "--address", cluster, "--submission-id", sid, "--no-wait",
                  "--working-dir", ".", "--runtime-env", "ray_jobs/runtime_env.yaml", "--",
                  "python", "ray_jobs/pipeline.py", "--config", "ray_jobs/configs/pipeline_tiny.yaml",
                  f"store={store}", f"synth.out={root / 'cohort'}", f"serve.port={free_ports(1)[0]}",
                  "ingest.ct.task_resources={ingest_cpu: 1}")
    assert submit.returncode == 0, submit.stdout + submit.stderr
    status = "PENDING"
    while status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.perf_counter() - start > JOB_TIMEOUT_S:
            _ray("job", "stop", "--address", cluster, sid)
            status = "TIMEOUT"
            break
        time.sleep(5)
        status = _job_status(_ray("job", "status", "--address", cluster, sid)) or status
    seconds = time.perf_counter() - start
    got = _ray("job", "logs", "--address", cluster, sid)
    logs = got.stdout + got.stderr
    print(f"job {sid}: {status} after {seconds:.0f} s\n{logs[-3000:]}")
    return status, logs, store, seconds


def test_the_tiny_pipeline_succeeds_as_a_ray_job(job):
    status, logs, _, _ = job
    assert status == "SUCCEEDED", logs[-6000:]
    table = logs[logs.rindex("stage       status"):]
    for stage in ("synth", "ingest", "train", "tune", "register", "signatures", "serve", "report"):
        assert f"\n{stage:<11} ran " in table, table
    assert "6/6 queries answered" in table and "exit 0" in table


def test_the_job_filled_the_store_and_the_registry(job):
    _, logs, store_dir, _ = job
    store = FeatureStore(str(store_dir))
    assert {"clinical", "labels", "expression", "mutations", "cnv", "radiomics", "wsi_tiles", "wsi_slide",
            "wsi_patient", "folds"} <= set(store.groups()), logs[-3000:]
    assert len(store.read_table("radiomics")) >= 20 and store.failures().empty
    runs = {p.name: p for p in (store_dir / "_results").iterdir()}
    train = [p for n, p in runs.items() if n.startswith("train-")]
    tune = [p for n, p in runs.items() if n.startswith("tune-early_fusion-")]
    assert len(train) == 1 and (train[0] / "results.json").exists() and (train[0] / "pipeline.json").exists()
    assert len(tune) == 1 and (tune[0] / "best_model").is_dir() and (tune[0] / "pipeline.json").exists()
    assert (store_dir / "_reports" / "report.html").stat().st_size > 10_000

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store_dir}/_mlflow/mlflow.db")
    for name in MODELS:
        version = client.get_model_version_by_alias(name, "champion")
        assert str(version.version) == "1" and version.tags["mmray.gate"] == "passed"
    tuned = client.get_model_version_by_alias("mmray__early_fusion", "champion")
    assert tuned.tags["mmray.tune_run"] == tune[0].name


def test_ct_tasks_asked_for_the_ingest_nodes_resource(cluster, job):
    status, _, _, _ = job
    assert status == "SUCCEEDED"
    listed = _ray("list", "tasks", "--address", cluster, "--filter", "func_or_class_name=_study_task",
                  "--detail", "--format", "json", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    tasks = json.loads(listed.stdout)
    assert len(tasks) >= 20
    assert all(t["required_resources"].get("ingest_cpu") == 1 for t in tasks), tasks[0]["required_resources"]
