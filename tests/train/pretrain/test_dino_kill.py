"""Drill: SIGKILL one Ray Train worker in the middle of a DINO epoch; the run resumes from the last checkpoint.

Two DDP workers (gloo) train DINO on small RGB tiles streamed from a Ray Dataset.  Once the checkpoint of
epoch 1 is registered and rank 1 runs a later epoch, the test kills rank 1's process (a real SIGKILL: no
exception, no cleanup).  Ray Train restarts the worker group (``FailureConfig(max_failures=1)``) from the last
registered checkpoint; the run must finish every epoch, the restarted epochs say ``attempt 1``, the loss and
the teacher stay finite, and the exported encoder loads in the encoder registry.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import torch
from ray_drills import Killer, read_json, wait_for

from mmray.train.pretrain.dino_config import DinoConfig
from mmray.train.pretrain.loop import DinoRunSpec, fit_dino, iters_per_epoch
from mmray.train.pretrain.tile_task import TileDinoTask
from mmray.train.pretrain.views2d import MultiCropConfig

pytestmark = [pytest.mark.integration, pytest.mark.drill]
EPOCHS = 5


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _registered_epoch(run_dir) -> int | None:
    snap = read_json(run_dir / "ray_train" / "checkpoint_manager_snapshot.json")
    latest = (snap or {}).get("latest_checkpoint_result") or {}
    return latest.get("metrics", {}).get("epoch")


def test_sigkill_of_a_dino_worker_mid_epoch_resumes_from_the_last_checkpoint(tmp_path):
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(768, 32, 32, 3), dtype=np.uint8)
    ds = ray.data.from_items([{"pixels": p} for p in pixels], override_num_blocks=8).materialize()
    task = TileDinoTask(backbone="cnn_small", crops=MultiCropConfig(global_px=32, local_px=16), n_local=2)
    cfg = DinoConfig(epochs=EPOCHS, batch_size=32, out_dim=256, head_hidden_dim=64, head_bottleneck_dim=32,
                     warmup_epochs=1, local_crops_number=2, drop_path_rate=0.0)
    spec = DinoRunSpec(task=task, dino=cfg, iters_per_epoch=iters_per_epoch(len(pixels), batch_size=32, workers=2),
                       world_size=2, name="dino drill")
    run_dir, beats = tmp_path / "run", tmp_path / "beats"

    def victim():
        beat, done = read_json(beats / "rank1.json"), _registered_epoch(run_dir)
        if beat and done is not None and done >= 1 and beat["attempt"] == 0 and beat["epoch"] > done:
            return beat["pid"], {"running_epoch": beat["epoch"], "registered_epoch": done}
        return None

    def died_and_resumed():
        died = read_json(beats / "rank1.json")
        wait_for(lambda: (read_json(beats / "rank0.json") or {}).get("attempt") == 1, timeout_s=600,
                 what="the restarted worker group to start an epoch")
        return died

    killer = Killer(victim, timeout_s=600, what="rank 1 running an epoch after the checkpoint of epoch 1",
                    after_kill=died_and_resumed)
    killer.start()
    fit = fit_dino(spec, train=ds, run_dir=run_dir, workers=2, max_failures=1, heartbeat_dir=beats)
    killer.check()
    died_in = killer.after
    assert died_in["pid"] == killer.pid and died_in["attempt"] == 0

    epochs = [h["epoch"] for h in fit.history]
    assert epochs == list(range(EPOCHS + 1)), epochs  # epoch 0: the random initialisation's row
    attempts = [h["attempt"] for h in fit.history[1:]]
    resumed_at = attempts.index(1) + 1  # the first epoch the restarted group trained
    assert attempts == [0] * (resumed_at - 1) + [1] * (EPOCHS - resumed_at + 1)
    assert 1 < resumed_at <= died_in["epoch"] <= EPOCHS  # the killed epoch was trained again
    restarted = read_json(beats / "rank1.json")
    assert restarted["attempt"] == 1 and restarted["pid"] != killer.pid
    assert all(np.isfinite(h["loss"]) for h in fit.history[1:])
    state = fit.load_state()
    assert state["epoch"] == EPOCHS and all(torch.isfinite(v).all() for v in state["teacher"].values()
                                            if v.is_floating_point())
    print(f"\ndino drill: killed rank-1 pid {killer.pid} in epoch {died_in['epoch']} of {EPOCHS} (registered "
          f"epoch {killer.info['registered_epoch']}), resumed at epoch {resumed_at} as pid {restarted['pid']}; "
          f"losses {[round(h['loss'], 3) for h in fit.history[1:]]}; test {time.perf_counter() - t_start:.0f} s")
