"""The pieces under the Ray Train loop, without Ray: column batches, padding, the distributed-exact losses,
local checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.models.losses import TimeBins, build_loss
from mmray.synth.arrays import simple_cohort
from mmray.train import data as D
from mmray.train.dist import global_loss
from mmray.train.epoch import TorchSpec
from mmray.train.ray_torch import fit_torch, run_loop
from mmray.train.session import LocalSession

DIMS = {"clinical": 4, "expression": 6}


@pytest.fixture(scope="module")
def prep():
    return simple_cohort(41, seed=2, dims=DIMS, effect=1.0).prepared()


def test_padding_adds_zero_weight_rows_and_batches_round_trip(prep):
    cols = D.prepared_columns(prep, pad_to_multiple=4, seed=0)
    assert len(cols["weight"]) == 44 and cols["weight"][:41].all() and not cols["weight"][41:].any()
    (batch, w), = list(D.batches(cols, batch_size=64, modalities=tuple(DIMS), dims=DIMS))
    assert batch.size == 44 and torch.equal(w, torch.from_numpy(cols["weight"]))
    np.testing.assert_array_equal(batch.feature("expression")[:41].numpy(), prep.features["expression"])
    np.testing.assert_array_equal(batch.mask[:41].numpy(), prep.mask)
    assert batch.patient_ids[:41] == prep.patient_ids


@pytest.mark.parametrize("task", ["survival_cox", "survival_discrete", "subtype"])
def test_global_loss_on_one_worker_is_the_plain_loss_and_ignores_padding(prep, task):
    torch.manual_seed(0)
    n_out = {"survival_cox": 1, "survival_discrete": 4, "subtype": 3}[task]
    bins = TimeBins.fit(prep.time_days, prep.event, 4) if task == "survival_discrete" else None
    cols = D.prepared_columns(prep)
    padded = D.prepared_columns(prep, pad_to_multiple=8, seed=1)
    (b, w), = list(D.batches(cols, batch_size=64, modalities=tuple(DIMS), dims=DIMS))
    (bp, wp), = list(D.batches(padded, batch_size=64, modalities=tuple(DIMS), dims=DIMS))
    out = torch.randn(b.size, n_out).squeeze(-1) if task == "survival_cox" else torch.randn(b.size, n_out)
    extra = torch.randn(bp.size - b.size, *out.shape[1:]) * 10
    out_p = torch.cat([out, extra])
    plain = build_loss(task, bins=bins)(out, b)
    loss, value = global_loss(task, out, b, w, bins=bins)
    loss_p, _ = global_loss(task, out_p, bp, wp, bins=bins)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(value, plain.detach())
    torch.testing.assert_close(loss_p, plain, rtol=1e-5, atol=1e-6)


def test_local_session_keeps_the_newest_checkpoints_and_a_rerun_resumes(prep, tmp_path):
    spec = TorchSpec(model="early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1, max_epochs=3,
                     patience=50, batch_size=16, seed=1)
    cols = D.prepared_columns(prep)
    s1 = LocalSession(tmp_path / "run", {"train": cols, "val": cols}, keep=2)
    run_loop(spec, s1, extra_files={"note.txt": b"hello"})
    names = [p.name for p in s1.checkpoints()]
    assert names == ["checkpoint_000001", "checkpoint_000002"] and len(s1.reports) == 3
    assert (s1.latest_checkpoint / "note.txt").read_bytes() == b"hello"
    longer = TorchSpec(**{**spec.__dict__, "max_epochs": 5})
    s2 = LocalSession(tmp_path / "run", {"train": cols, "val": cols}, keep=2)
    last = run_loop(longer, s2)  # picks up at epoch 3 from the newest checkpoint
    assert [r["epoch"] for r in s2.reports] == [3, 4] and last["attempt"] == 1
    fit = fit_torch(longer, train=cols, val=cols, run_dir=tmp_path / "run", executor="local")
    assert [h["epoch"] for h in fit.history] == [0, 1, 2, 3, 4]  # already done: nothing retrained


def test_a_resumed_fit_continues_the_random_streams_and_ends_where_an_uninterrupted_one_does(prep, tmp_path):
    # dropout on: a resume that re-seeds its dropout stream would train on other masks from the resumed epoch
    spec = TorchSpec(model="early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1, max_epochs=4,
                     patience=50, batch_size=16, seed=1, hparams={"dropout": 0.3, "modality_dropout": 0.2})
    cols = D.prepared_columns(prep)
    whole = fit_torch(spec, train=cols, val=cols, run_dir=tmp_path / "whole", executor="local")
    fit_torch(TorchSpec(**{**spec.__dict__, "max_epochs": 2}), train=cols, val=cols, run_dir=tmp_path / "split",
              executor="local")
    resumed = fit_torch(spec, train=cols, val=cols, run_dir=tmp_path / "split", executor="local")
    assert [h["attempt"] for h in resumed.history] == [0, 0, 1, 1]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)
