"""One real Serve application for the package's HTTP tests (Ray started once, here).

Four signature models registered in a sqlite MLflow under a synthetic store,
served on 127.0.0.1 with a token, two models per replica (so the tests see
LRU eviction), a small body limit (so the fuzzing reaches the 413 cheaply).
"""

from __future__ import annotations

import os

import mlflow
import mlflow.tracking._model_registry.utils as mlflow_registry
import mlflow.tracking._tracking_service.utils as mlflow_tracking
import pandas as pd
import pytest
import ray
from ray import serve
from .serve_testdata import MAX_INSTANCES, MAX_REQUEST_BYTES, MODELS, SIGS, TOKEN, free_port

from mmray.config import load_config
from mmray.registry.signatures import SignaturesConfig, run_signatures
from mmray.serve import MmrayClient
from mmray.serve.app import start_serve
from mmray.serve.config import ServeConfig
from mmray.store import FeatureStore
from mmray.synth.survival_store import write_survival_cohort, write_survival_groups


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    cohort = write_survival_cohort(root / "cohort", patients=60, seed=2)
    store = str(root / "store")
    write_survival_groups(cohort, store)
    previous_uris = (mlflow_tracking._tracking_uri, mlflow_registry._registry_uri)
    previous_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MMRAY_SERVE_TOKEN", raising=False)
    # Serve's throughput mode buffers 1000 request-path log lines: write each at once, so the
    # tests read (and scan) what the proxy and replicas log. Every Ray process inherits this.
    mp.setenv("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = load_config(SignaturesConfig, None, [
            f"cohort={cohort}", f"store={store}", f"only=[{','.join(SIGS)}]", "n_boot=0",
            "registry.gate.threshold=0.0"])  # register every model: this package tests serving
        report = run_signatures(cfg)
        assert report.counts()["registered"] == len(SIGS), report.table()
        scfg = load_config(ServeConfig, None, [
            f"store={store}", f"port={free_port()}", "max_models_per_replica=2", "replica_num_cpus=0.5",
            "model_prefix=sig__", f"token={TOKEN}", "alias_refresh_s=1.0",
            f"max_request_bytes={MAX_REQUEST_BYTES}", f"max_instances_per_request={MAX_INSTANCES}"])
        url = start_serve(scfg)
        mlflow.set_tracking_uri(f"sqlite:///{store}/_mlflow/mlflow.db")
        mlflow.set_registry_uri(f"sqlite:///{store}/_mlflow/mlflow.db")
        yield {"url": url, "store": store, "models": MODELS}
    finally:
        serve.shutdown()
        ray.shutdown()
        mp.undo()
        # mlflow.set_tracking_uri/set_registry_uri set module globals that outlive the package: later
        # modules (and mmray code reading mlflow's defaults) must not log into this package's store.
        # (set_*_uri also exports MLFLOW_*_URI, after the first module's own snapshot of the environment).
        mlflow_tracking._tracking_uri, mlflow_registry._registry_uri = previous_uris
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="package")
def client(server):
    with MmrayClient(server["url"], token=TOKEN) as c:
        yield c


@pytest.fixture(scope="package")
def patients(server) -> pd.DataFrame:
    """Real expression rows of 5 patients, gene columns only."""
    expr = FeatureStore(server["store"]).read_table("expression")
    return expr.drop(columns=["patient_id", "event_time"]).head(5)
