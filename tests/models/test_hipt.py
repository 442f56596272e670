"""HIPT: the 4096-level ViT over tile-embedding grids and the slide-level MIL model (registry ``hipt``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.batch import collate
from mmray.models.hipt import HIPT, FeatureGridViT, default_cells
from mmray.models.registry import build_model, get_spec
from mmray.train.config import ModelEntry, sets_for


def _batch(sizes, d=12, seed=0):
    rng = np.random.default_rng(seed)
    samples = [{"bag": rng.normal(size=(n, d)).astype(np.float32) if n else None, "time_days": 10.0 + i,
                "event": bool(i % 2), "subtype": i % 2} for i, n in enumerate(sizes)]
    return collate(samples, modalities=("tiles",), bag_dim=d)


def test_hipt_attention_sums_to_one_per_patient_and_regions_of_one_patient_do_not_leak():
    torch.manual_seed(0)
    m = build_model("hipt", task="survival_discrete", modality_dims={}, n_out=4, bag_dim=12, dropout=0.0)
    m.eval()
    b = _batch([5, 0, 3])
    out, attn = m.forward_with_attention(b)
    assert out.shape == (3, 4)
    idx = b.bag_index.numpy()
    assert attn.shape == (8,)
    for p in (0, 2):
        assert float(attn[idx == p].sum().detach()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(out[1], m.missing.detach())  # no regions: the learned constant
    b2 = _batch([5, 0, 3])
    b2.bag_feats[5:] = torch.randn(3, 12) * 10  # change patient 2's regions only
    out2, _ = m.forward_with_attention(b2)
    torch.testing.assert_close(out2[0], out[0])
    assert not torch.allclose(out2[2], out[2])


def test_hipt_trains_with_a_gradient_to_every_parameter_and_is_registered_slide_only():
    torch.manual_seed(0)
    m = build_model("hipt", task="survival_cox", modality_dims={}, n_out=1, bag_dim=12, dim=24, n_heads=3)
    out = m(_batch([4, 2, 3]))
    assert out.shape == (3,)
    out.sum().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n != "missing")
    assert get_spec("hipt").bag_group == "wsi_regions_hipt" and get_spec("hipt").needs_bag
    sets = {"slide": ("slide",), "tiles_only": ("tiles",), "path_omics": ("tiles", "expression")}
    assert sets_for(ModelEntry("hipt"), sets) == ["tiles_only"]
    with pytest.raises(DataError, match="slide-only"):
        HIPT(task="survival_cox", modality_dims={"expression": 4}, n_out=1, bag_dim=12)


def test_feature_grid_vit_takes_full_grids_and_crops():
    torch.manual_seed(0)
    v = FeatureGridViT(12, embed_dim=24, depth=2, heads=3, grid=4)
    for size in (4, 3, 1):
        assert v(torch.randn(2, size, size, 12)).shape == (2, 24)
    with pytest.raises(DataError, match=r"\[B, h, w, 12\]"):
        v(torch.randn(2, 4, 4, 8))
    assert default_cells(16, of16=14) == 14 and default_cells(16, of16=6) == 6
    assert default_cells(4, of16=14) == 4 and default_cells(4, of16=6) == 2
