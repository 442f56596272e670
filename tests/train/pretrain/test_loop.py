"""The generic DINO loop in one process: epochs, checkpoints, exact resume, a non-image task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmray.errors import DataError
from mmray.train.pretrain.dino_config import DinoConfig
from mmray.train.pretrain.loop import DinoRunSpec, DinoTask, fit_dino, iters_per_epoch


class ArrayData:
    """What the loop needs of a dataset shard: ``iter_batches`` over numpy rows."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def iter_batches(self, *, batch_size, batch_format="numpy", drop_last=True, **_):
        for s in range(0, len(self.x) - batch_size + 1 if drop_last else len(self.x), batch_size):
            yield {"x": self.x[s:s + batch_size]}


class VectorTask(DinoTask):
    """DINO on plain vectors (not images): views are noisy, masked copies; an MLP backbone."""

    def build_backbone(self, *, drop_path_rate=0.0):
        return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 6)), 6

    def views(self, batch, *, generator):
        x = torch.from_numpy(batch["x"]).float()
        out = []
        for i in range(4):
            noise = 0.3 if i < 2 else 0.6
            out.append(x + noise * torch.randn(x.shape, generator=generator))
        return out

    def evaluate(self, backbone, *, device):
        with torch.no_grad():
            return {"probe_norm": float(backbone(torch.ones(1, 8)).norm())}


class CrashAt:
    """An ``on_epoch`` callback that raises once, at one epoch, before that epoch's checkpoint."""

    def __init__(self, marker: Path, epoch: int):
        self.marker, self.epoch = marker, epoch

    def __call__(self, row):
        if row["epoch"] == self.epoch and not self.marker.exists():
            self.marker.write_text("crashed")
            raise RuntimeError("simulated crash")


def _spec(on_epoch=None, epochs=3):
    cfg = DinoConfig(epochs=epochs, batch_size=8, out_dim=32, head_hidden_dim=16, head_bottleneck_dim=8,
                     warmup_epochs=1, local_crops_number=2, drop_path_rate=0.0)
    return DinoRunSpec(task=VectorTask(), dino=cfg, iters_per_epoch=iters_per_epoch(40, batch_size=8, workers=1),
                       on_epoch=on_epoch, name="vector-dino")


def test_local_run_writes_history_and_resumes_exactly_after_a_crash(tmp_path):
    data = ArrayData(np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32))
    ref = fit_dino(_spec(), train=data, run_dir=tmp_path / "ref", executor="local")
    assert [h["epoch"] for h in ref.history] == [0, 1, 2, 3]
    assert all(np.isfinite(h["loss"]) and h["steps"] == 5 for h in ref.history[1:])
    assert ref.history[1]["lr"] > ref.history[2]["lr"] > ref.history[3]["lr"]  # warm-up peak, then cosine
    assert ref.history[3]["momentum"] > ref.history[1]["momentum"]
    state = ref.load_state()
    assert set(state) >= {"student", "teacher", "optimizer", "center", "history", "rng"}

    crash = CrashAt(tmp_path / "crash.marker", epoch=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_dino(_spec(crash), train=data, run_dir=tmp_path / "crashed", executor="local")
    got = fit_dino(_spec(crash), train=data, run_dir=tmp_path / "crashed", executor="local")
    assert [h["epoch"] for h in got.history] == [0, 1, 2, 3]
    assert [h["attempt"] for h in got.history[1:]] == [0, 1, 1]
    np.testing.assert_allclose([h["loss"] for h in got.history[1:]], [h["loss"] for h in ref.history[1:]],
                               rtol=1e-6)
    t_ref, t_got = ref.load_state()["teacher"], got.load_state()["teacher"]
    for k in t_ref:
        torch.testing.assert_close(t_got[k], t_ref[k])


def test_too_little_data_for_one_batch_is_a_clear_error():
    with pytest.raises(DataError, match="no full batch"):
        iters_per_epoch(10, batch_size=8, workers=2)
