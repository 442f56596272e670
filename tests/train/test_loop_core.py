"""The plain-PyTorch loop the Ray half wraps: seeded, early-stopped on validation C-index, restores the best."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.batch import PatientDataset
from mmray.models.losses import build_loss
from mmray.models.registry import build_model
from mmray.synth.arrays import simple_cohort
from mmray.train.loop_core import (
    EarlyStopping,
    fit,
    make_loader,
    predict,
    seed_everything,
    train_epoch,
    validation_score,
)

DIMS = {"clinical": 4, "expression": 8}


@pytest.fixture(scope="module")
def data():
    c = simple_cohort(200, seed=1, dims=DIMS, effect=1.0)

    def ds(idx):
        return PatientDataset({m: c.features[m][idx] for m in DIMS}, {m: c.present[m][idx] for m in DIMS},
                              time_days=c.time_days[idx], event=c.event[idx], subtype=c.subtype[idx])
    return ds(np.arange(150)), ds(np.arange(150, 200))


def _run(data, seed, *, epochs=8, history=None):
    seed_everything(seed)
    model = build_model("early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1)
    train = make_loader(data[0], modalities=model.modalities, batch_size=32, shuffle=True, seed=seed)
    val = make_loader(data[1], modalities=model.modalities, batch_size=64, shuffle=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    res = fit(model, train, val, task="survival_cox", loss_fn=build_loss("survival_cox"), optimizer=opt,
              max_epochs=epochs, patience=3, on_epoch=(lambda e, row: history.append(row)) if history is not None
              else None)
    return model, res, predict(model, val)


def test_same_seed_same_model(data):
    _, r1, p1 = _run(data, 0)
    _, r2, p2 = _run(data, 0)
    _, _, p3 = _run(data, 1)
    assert np.array_equal(p1.output, p2.output) and r1.history == r2.history
    assert not np.array_equal(p1.output, p3.output)


def test_early_stopping_restores_the_best_epoch(data):
    history = []
    _, res, pred = _run(data, 0, epochs=40, history=history)
    assert history == res.history and len(history) <= 40
    best = max(h["val_score"] for h in history)
    assert res.best_score == pytest.approx(best)
    assert history[res.best_epoch]["val_score"] == pytest.approx(best)
    assert validation_score("survival_cox", pred) == pytest.approx(best)  # the weights of the best epoch
    if len(history) < 40:
        assert len(history) - 1 - res.best_epoch == 3  # stopped after `patience` epochs without improving


def test_early_stopping_ignores_nan_scores():
    stop = EarlyStopping(patience=2)
    model = torch.nn.Linear(1, 1)
    assert not stop.step(0.6, model, epoch=0)
    assert not stop.step(float("nan"), model, epoch=1)
    assert stop.step(0.59, model, epoch=2) and stop.best_epoch == 0


def test_batches_without_events_train_and_bad_losses_are_reported(data):
    model = build_model("single", task="survival_cox", modality_dims={"clinical": 4}, n_out=1)
    ds = data[0]
    censored = PatientDataset({"clinical": ds.features["clinical"][:20]}, {"clinical": ds.present["clinical"][:20]},
                              time_days=ds.labels["time_days"][:20], event=np.zeros(20, bool))
    loader = make_loader(censored, modalities=model.modalities, batch_size=10, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert train_epoch(model, loader, build_loss("survival_cox"), opt) == 0.0
    with pytest.raises(DataError, match="NaN"):
        train_epoch(model, loader, lambda out, b: out.sum() * float("nan"), opt)
    pred = predict(model, loader)
    assert np.isnan(validation_score("survival_cox", pred))  # no events: undefined, not a crash
