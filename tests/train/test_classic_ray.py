"""Classical fits as parallel Ray tasks give exactly what the in-driver fits give; a bad fit is recorded."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from train_testdata import write_tiny_store

from mmray.config import load_config
from mmray.train.config import TrainJobConfig
from mmray.train.cv import run_train

pytestmark = pytest.mark.integration


def _cfg(store, out):
    return load_config(TrainJobConfig, None, [
        f"store={store}", f"output={out}", "folds.n_folds=3", "n_boot=0", "mlflow.enabled=false",
        "modality_sets={omics: [clinical, expression], clinical: [clinical], broken: [radiomics]}",
        "preprocess.screen={expression: {max_p: 0.5, top_k: 4}}",
        ("models=[{name: coxnet, sets: [omics]}, {name: gbsa, sets: [omics], hparams: {n_estimators: 20}},"
         " {name: ensemble, sets: [omics], hparams: {members: [coxph_ridge, coxph_ridge@clinical]}},"
         " {name: rsf, sets: [broken], hparams: {n_estimators: 0}}]")])


def test_ray_tasks_match_in_driver_fits_and_failures_are_recorded(tmp_path):
    st, _ = write_tiny_store(tmp_path / "s", n=45, seed=3)
    local = run_train(_cfg(st.uri, tmp_path / "local"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    try:
        remote = run_train(_cfg(st.uri, tmp_path / "ray"))
    finally:
        ray.shutdown()
    key = ["model", "modality_set", "repeat", "fold"]
    a, b = (r.results.sort_values(key).reset_index(drop=True) for r in (local, remote))
    assert len(a) == len(b) == 4 * 3
    np.testing.assert_allclose(a["harrell_c"].to_numpy(float), b["harrell_c"].to_numpy(float), equal_nan=True)
    np.testing.assert_allclose(a["ibs"].to_numpy(float), b["ibs"].to_numpy(float), equal_nan=True)
    pa, pb = (r.predictions.sort_values(key + ["patient_id"]) for r in (local, remote))
    np.testing.assert_allclose(pa["risk"].to_numpy(), pb["risk"].to_numpy(), rtol=1e-9)
    bad = b[b["modality_set"] == "broken"]
    assert (bad["status"] == "error").all() and bad["error"].str.contains("n_estimators").all()
    assert remote.exit_code == 3 and (b[b["modality_set"] != "broken"]["status"] == "ok").all()
