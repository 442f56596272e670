"""Ray Train: DDP on 2 workers follows the 1-worker trajectory, a failed worker group resumes from its
checkpoint, and HEEC trains on Ray Train's LightGBM trainer with 2 workers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import ray

from mmray.models.heec import HEEC
from mmray.synth.arrays import simple_cohort
from mmray.train import data as D
from mmray.train.metrics import harrell_c, subtype_auc
from mmray.train.ray_lgbm import fit_heec
from mmray.train.ray_torch import TorchSpec, fit_torch, load_checkpoint, predict_columns

DIMS = {"clinical": 4, "expression": 8}

# starts Ray (a module fixture): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()



def test_ddp_two_workers_match_one_worker_and_resume_from_the_failed_epoch(tmp_path):
    c = simple_cohort(91, seed=3, dims=DIMS, effect=1.0)
    fit, val = c.prepared(np.arange(71)), c.prepared(np.arange(71, 91))
    # full batch (each worker's shard is one batch), no dropout: the same global step on 1 or 2 workers
    spec = TorchSpec(model="early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1,
                     hparams={"dropout": 0.0, "modality_dropout": 0.0}, lr=3e-3, batch_size=1024, max_epochs=6,
                     patience=100, seed=0)
    val_cols = D.prepared_columns(val)
    # the one-worker reference: the same loop in this process (world size 1, no process group)
    one = fit_torch(spec, train=D.prepared_columns(fit), val=val_cols, run_dir=tmp_path / "w1", executor="local")
    train2 = D.prepared_columns(fit, pad_to_multiple=2)
    assert len(train2["weight"]) == 72 and train2["weight"].sum() == 71  # one zero-weight pad row, no patient dropped
    two = fit_torch(dataclasses.replace(spec, fail_at_epoch=3), train=train2, val=val_cols, run_dir=tmp_path / "w2",
                    workers=2, max_failures=1)

    # the drill fired once at epoch 3; the restarted group continued from epoch 2's checkpoint, not from scratch
    assert (tmp_path / ".w2.failure_drill").exists()
    assert [h["epoch"] for h in two.history] == list(range(6))
    assert [h["attempt"] for h in two.history] == [0, 0, 0, 1, 1, 1]
    assert [h["attempt"] for h in one.history] == [0] * 6
    assert all(h["rows"] == 36 for h in two.history) and all(h["rows"] == 71 for h in one.history)

    # same loss curve and the same final model within 1e-4.  Cox risks are defined up to an additive
    # constant (the partial likelihood ignores it, so Adam lets float noise move the output bias):
    # compare centred risks.
    np.testing.assert_allclose([h["train_loss"] for h in two.history], [h["train_loss"] for h in one.history],
                               atol=1e-4)
    last1, _, _ = load_checkpoint(one.checkpoint, best=False)
    last2, state2, _ = load_checkpoint(two.checkpoint, best=False)
    assert state2["epoch"] == 5
    p1 = predict_columns(last1, val_cols, dims=DIMS).output
    p2 = predict_columns(last2, val_cols, dims=DIMS).output
    assert np.abs((p1 - p1.mean()) - (p2 - p2.mean())).max() < 1e-4
    assert np.std(p1) > 1e-2 and one.history[-1]["train_loss"] < one.history[0]["train_loss"]  # it learned


def _heec_table(n: int, seed: int) -> tuple[pd.DataFrame, object]:
    c = simple_cohort(n, seed=seed, dims={"clinical": 3, "expression": 40}, effect=1.0, p_missing=0.1)
    cols = {}
    for m in ("clinical", "expression"):
        x = np.where(c.present[m][:, None], c.features[m], np.nan)
        for j, name in enumerate(c.columns[m]):
            cols[name] = x[:, j]
    return pd.DataFrame(cols), c


def test_ray_lightgbm_trains_heec_on_two_workers_and_beats_random(tmp_path):
    X, c = _heec_table(400, seed=5)
    tr, va, te = np.arange(260), np.arange(260, 320), np.arange(320, 400)
    heec = HEEC(task="survival_cox", n_estimators=150, learning_rate=0.05, seed=0)
    info = fit_heec(heec, X.iloc[tr], time_days=c.time_days[tr], event=c.event[tr], X_val=X.iloc[va],
                    time_days_val=c.time_days[va], event_val=c.event[va], workers=2, run_dir=tmp_path / "cox")
    assert info["executor"] == "ray_train" and info["world_size"] == 2
    assert info["rows"] == 130  # rank 0's shard: half of the 260 training rows
    risk = heec.predict(X.iloc[te])
    c_ray = harrell_c(risk, time_days=c.time_days[te], event=c.event[te])
    assert c_ray > 0.65
    # the genomics screen ran on the training rows: the planted column survives, most noise columns do not
    assert "expression__f0" in heec.features_ and sum(f.startswith("expression__") for f in heec.features_) < 20

    local = HEEC(task="survival_cox", n_estimators=150, learning_rate=0.05, seed=0)
    fit_heec(local, X.iloc[tr], time_days=c.time_days[tr], event=c.event[tr], X_val=X.iloc[va],
             time_days_val=c.time_days[va], event_val=c.event[va], executor="local")
    c_local = harrell_c(local.predict(X.iloc[te]), time_days=c.time_days[te], event=c.event[te])
    assert abs(c_ray - c_local) < 0.08  # stratified (per-shard) Cox objective: close to the one-machine fit


def test_ray_lightgbm_heec_subtype_multiclass_on_two_workers(tmp_path):
    X, c = _heec_table(400, seed=5)
    tr, va, te = np.arange(260), np.arange(260, 320), np.arange(320, 400)
    sub = HEEC(task="subtype", n_classes=3, n_estimators=80, learning_rate=0.1, seed=0)
    fit_heec(sub, X.iloc[tr], y=c.subtype[tr], X_val=X.iloc[va], y_val=c.subtype[va], workers=2,
             run_dir=tmp_path / "subtype")
    proba = sub.predict(X.iloc[te])
    assert proba.shape == (80, 3) and np.allclose(proba.sum(1), 1.0)
    assert subtype_auc(c.subtype[te], proba) > 0.75
