"""Every torch model: output shapes, no leak from masked modalities, and learning planted signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmray.models.batch import BAG, collate
from mmray.models.losses import TimeBins, build_loss
from mmray.models.registry import build_model
from mmray.synth.arrays import simple_cohort
from mmray.train.loop_core import fit, make_loader, predict, seed_everything
from mmray.train.metrics import balanced_accuracy, harrell_c

DIMS = {"clinical": 4, "expression": 12, "radiomics": 6}
TILE_DIM = 8
TORCH_MODELS = ["single", "early_fusion", "late_fusion", "attention_fusion", "porpoise", "hetero_gnn", "mm_gnn"]


def _build(name, task, n_out, dims=DIMS, **hp):
    dims = {"expression": dims["expression"]} if name == "single" else dict(dims)
    return build_model(name, task=task, modality_dims=dims, n_out=n_out,
                       bag_dim=TILE_DIM if name == "porpoise" else None, **hp)


@pytest.fixture(scope="module")
def cohort():
    """Risk from 4 modalities (3 tabular + tiles), each missing for ~20% of patients."""
    return simple_cohort(400, seed=6, dims=DIMS, tile_dim=TILE_DIM, effect=1.0, p_missing=0.2)


@pytest.fixture(scope="module")
def expression_cohort():
    """All the planted risk in expression: what a single-modality model can learn."""
    return simple_cohort(400, seed=6, dims={"expression": 12}, effect=1.0, p_missing=0.1)


def _dataset(c, idx):
    from mmray.models.batch import PatientDataset
    return PatientDataset({m: c.features[m][idx] for m in c.features}, {m: c.present[m][idx] for m in c.features},
                          bags=[c.bags[i] for i in idx], time_days=c.time_days[idx], event=c.event[idx],
                          subtype=c.subtype[idx], patient_ids=[c.patient_ids[i] for i in idx])


def _batch(c, model, idx):
    ds = _dataset(c, idx)
    return collate([ds[i] for i in range(len(ds))], modalities=model.modalities, dims=ds.dims, bag_dim=TILE_DIM)


@pytest.mark.parametrize("name", TORCH_MODELS)
@pytest.mark.parametrize("task,n_out,shape", [("survival_cox", 1, (16,)), ("survival_discrete", 4, (16, 4)),
                                              ("subtype", 3, (16, 3))])
def test_output_shapes(cohort, name, task, n_out, shape):
    torch.manual_seed(0)
    model = _build(name, task, n_out).eval()
    out = model(_batch(cohort, model, np.arange(16)))
    assert out.shape == shape and torch.isfinite(out).all()


def _scramble_masked(batch):
    """Garbage (huge values, NaN) in every masked slot and in the tiles of patients whose bag is masked."""
    g = torch.Generator().manual_seed(9)
    feats = {}
    for m, x in batch.features.items():
        p = batch.present(m).unsqueeze(1)
        junk = torch.randn(x.shape, generator=g) * 1e3
        junk[::2] = float("nan")
        feats[m] = torch.where(p, x, junk)
    bag = batch.bag_feats
    if bag is not None and bag.shape[0]:
        masked_tile = ~batch.present(BAG)[batch.bag_index]
        bag = torch.where(masked_tile.unsqueeze(1), torch.randn(bag.shape, generator=g) * 1e3, bag)
    return dataclasses.replace(batch, features=feats, bag_feats=bag)


@pytest.mark.parametrize("name", TORCH_MODELS)
@pytest.mark.parametrize("task,n_out", [("survival_cox", 1), ("subtype", 3)])
def test_masked_modalities_do_not_change_outputs(cohort, name, task, n_out):
    torch.manual_seed(0)
    model = _build(name, task, n_out).eval()
    batch = _batch(cohort, model, np.arange(60))
    if BAG in model.modalities:  # also mask the bag of a few patients that do have tiles
        has_tiles = torch.bincount(batch.bag_index, minlength=batch.size) > 0
        col = model.modalities.index(BAG)
        mask = batch.mask.clone()
        mask[torch.nonzero(has_tiles).squeeze(1)[:5], col] = False
        batch = dataclasses.replace(batch, mask=mask)
    assert (~batch.mask).any()
    with torch.no_grad():
        ref = model(batch)
        out = model(_scramble_masked(batch))
    assert torch.isfinite(out).all()
    assert torch.equal(ref, out)
    # not vacuous: changing a *present* modality does change the output
    m = next(iter(model.modality_dims))
    bumped = dict(batch.features)
    bumped[m] = batch.features[m] + 5.0 * batch.present(m).unsqueeze(1)
    with torch.no_grad():
        assert not torch.equal(ref, model(dataclasses.replace(batch, features=bumped)))


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_patients_with_no_modality_get_a_finite_output(cohort, name):
    model = _build(name, "survival_cox", 1).eval()
    batch = _batch(cohort, model, np.arange(8))
    empty = dataclasses.replace(batch, mask=torch.zeros_like(batch.mask))
    with torch.no_grad():
        out = model(empty)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, out[0].expand_as(out))  # nothing seen: the same learned constant for all


def _train(c, name, task, *, epochs=40, **hp):
    """Train on 240 patients, early-stop on 60, predict the 100 held out."""
    seed_everything(0)
    tr, va, te = np.arange(0, 240), np.arange(240, 300), np.arange(300, 400)
    bins = TimeBins.fit(c.time_days[tr], c.event[tr], 4)
    n_out = {"survival_cox": 1, "survival_discrete": bins.n_bins, "subtype": 3}[task]
    model = _build(name, task, n_out, {m: x.shape[1] for m, x in c.features.items()}, **hp)
    train = make_loader(_dataset(c, tr), modalities=model.modalities, batch_size=64, shuffle=True,
                        bag_dim=TILE_DIM)
    val = make_loader(_dataset(c, va), modalities=model.modalities, batch_size=128, shuffle=False,
                      bag_dim=TILE_DIM)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    fit(model, train, val, task=task, loss_fn=build_loss(task, bins=bins), optimizer=opt, max_epochs=epochs,
        patience=8)
    test = make_loader(_dataset(c, te), modalities=model.modalities, batch_size=128, shuffle=False,
                       bag_dim=TILE_DIM)
    return predict(model, test)


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_survival_models_beat_random(cohort, expression_cohort, name):
    pred = _train(expression_cohort if name == "single" else cohort, name, "survival_cox")
    assert harrell_c(pred.risk("survival_cox"), time_days=pred.time_days, event=pred.event) > 0.6


@pytest.mark.parametrize("name", ["early_fusion", "porpoise"])
def test_discrete_time_models_beat_random(cohort, name):
    pred = _train(cohort, name, "survival_discrete")
    assert harrell_c(pred.risk("survival_discrete"), time_days=pred.time_days, event=pred.event) > 0.6


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_subtype_models_beat_chance(cohort, expression_cohort, name):
    pred = _train(expression_cohort if name == "single" else cohort, name, "subtype")
    assert balanced_accuracy(pred.subtype, pred.output.argmax(1)) > 0.55  # chance: 1/3


def test_attention_fusion_modality_dropout_never_drops_everything():
    from mmray.models.blocks import modality_dropout
    torch.manual_seed(0)
    mask = torch.rand(500, 4) < 0.5
    out = modality_dropout(mask, 0.9, training=True)
    assert not (out & ~mask).any()  # never invents a modality
    assert torch.equal(out.any(1), mask.any(1))  # never empties a patient that had one
    assert out.sum() < mask.sum()  # but does drop
    assert torch.equal(modality_dropout(mask, 0.9, training=False), mask)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_models_run_on_gpu_like_on_cpu(cohort, name):
    torch.manual_seed(0)
    model = _build(name, "survival_cox", 1).eval()
    batch = _batch(cohort, model, np.arange(32))
    with torch.no_grad():
        cpu = model(batch)
        gpu = model.to("cuda")(batch.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)
    model.train()
    loss = build_loss("survival_cox")(model(batch.to("cuda")), batch.to("cuda"))
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
