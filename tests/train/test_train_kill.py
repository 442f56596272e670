"""Drill: SIGKILL one Ray Train worker process mid-epoch.

Two DDP workers train with dropout on (so every rank's random stream matters).  When the checkpoint of
an epoch is registered and the next epoch runs, the test kills rank 1's process.  Ray Train restarts the
worker group (``FailureConfig(max_failures=1)``) from the last registered checkpoint, and the run ends
exactly where an uninterrupted run with the same seeds ends: per-epoch losses and validation scores,
the early-stopping best, and the best model's held-out C-index.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
from ray_drills import Killer, read_json, wait_for

from mmray.synth.arrays import simple_cohort
from mmray.train import data as D
from mmray.train.metrics import harrell_c
from mmray.train.ray_torch import TorchSpec, fit_torch, load_checkpoint, predict_columns

pytestmark = [pytest.mark.integration, pytest.mark.drill]
DIMS = {"clinical": 4, "expression": 8}
EPOCHS = 6
KILL_AFTER = 2  # kill once the checkpoint of epoch >= 2 is registered and a later epoch runs
TOL = 1e-6  # same seeds, same shards, deterministic CPU kernels: the resumed run is the same float32 run


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _registered_epoch(run_dir) -> int | None:
    """The epoch of the latest checkpoint Ray Train's controller registered (its snapshot file)."""
    snap = read_json(run_dir / "checkpoint_manager_snapshot.json")
    latest = (snap or {}).get("latest_checkpoint_result") or {}
    return latest.get("metrics", {}).get("epoch")


def test_sigkill_of_a_train_worker_mid_epoch_resumes_from_the_last_checkpoint_and_ends_equal(tmp_path):
    t_start = time.perf_counter()
    c = simple_cohort(560, seed=3, dims=DIMS, effect=1.0)
    fit, val, test = c.prepared(np.arange(400)), c.prepared(np.arange(400, 480)), c.prepared(np.arange(480, 560))
    train_cols, val_cols = D.prepared_columns(fit, pad_to_multiple=2), D.prepared_columns(val)
    # dropout on: a restart that re-seeds (or gives every rank rank 0's stream) takes another path
    spec = TorchSpec(model="early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1,
                     hparams={"dropout": 0.3, "modality_dropout": 0.2}, lr=1e-3, batch_size=8, max_epochs=EPOCHS,
                     patience=EPOCHS, seed=0)
    ref = fit_torch(spec, train=train_cols, val=val_cols, run_dir=tmp_path / "uninterrupted", workers=2)

    run_dir, beats = tmp_path / "killed", tmp_path / "beats"

    def victim():
        beat, done = read_json(beats / "rank1.json"), _registered_epoch(run_dir)
        if beat and done is not None and done >= KILL_AFTER and beat["attempt"] == 0 and beat["epoch"] > done:
            return beat["pid"], {"running_epoch": beat["epoch"], "registered_epoch": done}
        return None

    def died_and_resumed():
        died = read_json(beats / "rank1.json")  # its last heartbeat: the epoch it died in
        wait_for(lambda: (read_json(beats / "rank0.json") or {}).get("attempt") == 1, timeout_s=600,
                 what="the restarted worker group to start an epoch")
        return died, time.monotonic()

    killer = Killer(victim, timeout_s=600, what="rank 1 running an epoch after the checkpoint of epoch 2",
                    after_kill=died_and_resumed)
    killer.start()
    t0 = time.perf_counter()
    got = fit_torch(spec, train=train_cols, val=val_cols, run_dir=run_dir, workers=2, max_failures=1,
                    heartbeat_dir=beats)
    killed_s = time.perf_counter() - t0
    killer.check()
    died_in, resumed_t = killer.after
    assert died_in["pid"] == killer.pid and died_in["attempt"] == 0

    attempts = [h["attempt"] for h in got.history]
    resumed_at = attempts.index(1)  # the first epoch the restarted group trained
    assert [h["epoch"] for h in got.history] == list(range(EPOCHS))
    assert attempts == [0] * resumed_at + [1] * (EPOCHS - resumed_at)
    # killed while epoch E ran (it never finished in attempt 0), resumed from a checkpoint of epoch >= 2
    assert KILL_AFTER < resumed_at <= died_in["epoch"] < EPOCHS
    restarted = read_json(beats / "rank1.json")
    assert restarted["attempt"] == 1 and restarted["pid"] != killer.pid  # a new process took rank 1

    # the same run: per-epoch figures, the early-stopping best, the final and best models
    np.testing.assert_allclose([h["train_loss"] for h in got.history], [h["train_loss"] for h in ref.history],
                               atol=TOL, rtol=0)
    np.testing.assert_allclose([h["val_score"] for h in got.history], [h["val_score"] for h in ref.history],
                               atol=TOL, rtol=0)
    assert (got.best_epoch, got.best_score) == (ref.best_epoch, pytest.approx(ref.best_score, abs=TOL))
    test_cols = D.prepared_columns(test)
    scores = {}
    for name, f in (("uninterrupted", ref), ("killed", got)):
        best = predict_columns(f.model, test_cols, dims=DIMS).output.ravel()
        last, _, _ = load_checkpoint(f.checkpoint, best=False)
        scores[name] = (harrell_c(best, time_days=test.time_days, event=test.event),
                        predict_columns(last, test_cols, dims=DIMS).output.ravel())
    assert abs(scores["killed"][0] - scores["uninterrupted"][0]) <= TOL
    np.testing.assert_allclose(scores["killed"][1], scores["uninterrupted"][1], atol=1e-5, rtol=0)
    assert scores["uninterrupted"][0] > 0.6  # it learned something worth comparing
    loss_diff = np.abs(np.subtract([h["train_loss"] for h in got.history], [h["train_loss"] for h in ref.history]))
    print(f"\ntrain drill: killed rank-1 pid {killer.pid} (restarted as pid {restarted['pid']}) in epoch "
          f"{died_in['epoch']} of {EPOCHS} (controller had registered epoch {killer.info['registered_epoch']}), "
          f"resumed at epoch {resumed_at} from the epoch {resumed_at - 1} checkpoint "
          f"{resumed_t - killer.killed_at:.0f} s after the kill; best val C {got.best_score:.6f} (epoch "
          f"{got.best_epoch}) vs {ref.best_score:.6f} uninterrupted; test C {scores['killed'][0]:.6f} vs "
          f"{scores['uninterrupted'][0]:.6f}; max |train loss diff| {loss_diff.max():.2e}; killed run "
          f"{killed_s:.0f} s, uninterrupted {ref.seconds:.0f} s, test {time.perf_counter() - t_start:.0f} s")
