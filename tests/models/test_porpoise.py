"""PORPOISE: variable and empty bags, attention per patient, unimodal fallbacks, attention finds the signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.batch import collate
from mmray.models.losses import build_loss
from mmray.models.porpoise import Porpoise
from mmray.synth.arrays import simple_cohort
from mmray.train.loop_core import seed_everything, train_epoch

DIMS = {"expression": 6, "clinical": 3}


def _samples(bag_sizes, *, omics=True, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, k in enumerate(bag_sizes):
        feats = {m: (rng.normal(size=d) if omics else None) for m, d in DIMS.items()}
        out.append({"patient_id": f"p{i}", "features": feats,
                    "bag": None if k is None else rng.normal(size=(k, 5)).astype(np.float32),
                    "time_days": float(10 + i), "event": bool(i % 2), "subtype": i % 3})
    return out


def _model(task="survival_cox", n_out=1):
    torch.manual_seed(0)
    return Porpoise(task=task, modality_dims=DIMS, n_out=n_out, bag_dim=5).eval()


def test_variable_and_empty_bags_and_attention_sums_to_one_per_patient():
    model = _model()
    batch = collate(_samples([3, None, 17, 0, 1]), modalities=model.modalities, bag_dim=5)
    with torch.no_grad():
        out, attn = model.forward_with_attention(batch)
    assert out.shape == (5,) and torch.isfinite(out).all()
    assert attn.shape == (21,) and (attn >= 0).all()
    per_patient = torch.zeros(5).index_add(0, batch.bag_index, attn)
    assert per_patient.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 1.0], abs=1e-6)
    assert attn[batch.bag_index == 4].item() == pytest.approx(1.0)  # a one-tile bag


def test_each_patient_depends_only_on_its_own_bag():
    model = _model()
    batch = collate(_samples([4, 6, 2]), modalities=model.modalities, bag_dim=5)
    changed = batch.bag_feats.clone()
    changed[batch.bag_index == 1] += 10.0
    with torch.no_grad():
        a = model(batch)
        b = model(dataclasses.replace(batch, bag_feats=changed))
    assert a[0] == b[0] and a[2] == b[2] and a[1] != b[1]


def test_fallbacks_use_the_present_branch():
    model = _model()
    both = collate(_samples([4, 5]), modalities=model.modalities, bag_dim=5)
    no_bag = collate(_samples([None, None]), modalities=model.modalities, bag_dim=5)
    no_omics = collate(_samples([4, 5], omics=False), modalities=model.modalities, dims=DIMS, bag_dim=5)
    nothing = collate(_samples([0, None], omics=False), modalities=model.modalities, dims=DIMS, bag_dim=5)
    with torch.no_grad():
        assert torch.isfinite(model(both)).all()
        # only omics: the omic head, whatever the fusion and path heads hold
        omic_only = model.omic_head(model.snn(torch.cat([no_bag.features["expression"], no_bag.features["clinical"],
                                                         torch.ones(2, 2)], 1))).squeeze(-1)
        assert torch.allclose(model(no_bag), omic_only)
        path, _ = model.mil(no_omics.bag_feats, no_omics.bag_index, 2)
        assert torch.allclose(model(no_omics), model.path_head(path).squeeze(-1))
        assert torch.allclose(model(nothing), model.missing.expand(2))


def test_needs_bags():
    with pytest.raises(DataError, match="bag_dim"):
        Porpoise(task="survival_cox", modality_dims=DIMS, n_out=1)
    model = _model()
    batch = collate(_samples([2]), modalities=("expression", "clinical"))
    with pytest.raises(DataError, match="bag"):
        model(batch)


def test_attention_learns_to_find_tumour_tiles():
    c = simple_cohort(160, seed=2, dims={"expression": 4}, tile_dim=8, tiles=(4, 12), effect=1.0)
    seed_everything(0)
    model = Porpoise(task="subtype", modality_dims={"expression": 4}, n_out=3, bag_dim=8, dropout=0.0)
    samples = [{"patient_id": str(i), "features": {"expression": None}, "bag": c.bags[i],
                "subtype": int(c.subtype[i])} for i in range(c.n)]  # tiles only: the bag must do the work
    batches = [collate(samples[i:i + 40], modalities=model.modalities, dims={"expression": 4}, bag_dim=8)
               for i in range(0, c.n, 40)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        train_epoch(model, batches, build_loss("subtype"), opt)
    model.eval()
    batch = collate(samples, modalities=model.modalities, dims={"expression": 4}, bag_dim=8)
    with torch.no_grad():
        _, attn = model.forward_with_attention(batch)
    tumour = torch.from_numpy(np.concatenate([t for t in c.tumour if t is not None and len(t)]))
    # mean attention on a tumour tile vs a normal one (bags are ~30% tumour)
    assert attn[tumour].mean() > 3 * attn[~tumour].mean()
