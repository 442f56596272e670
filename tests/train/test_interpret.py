"""Interpretation: IG against a linear model's exact attributions, masking drops, attention, fold summaries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from mmray.models.batch import make_batch
from mmray.models.blocks import TaskModel, keep
from mmray.models.registry import build_model
from mmray.train import data as D
from mmray.train.interpret import (attention_importance, gene_of_feature, integrated_gradients, interpret_fold,
                                   masking_drop)
from mmray.train.interpret_summary import gene_ranking, modality_summary, stability, summarize_interpretation
from mmray.train.metrics import harrell_c

DIMS = {"clinical": 2, "expression": 3, "proteins": 2}
MODS = tuple(DIMS)


class Linear(TaskModel):
    """risk = sum of w_m . x_m over present modalities (IG from 0 is exactly w * x)."""

    def __init__(self):
        super().__init__(task="survival_cox", modality_dims=DIMS, n_out=1)
        self.w = {"clinical": torch.tensor([1.0, 0.0]), "expression": torch.tensor([2.0, -1.0, 0.0]),
                  "proteins": torch.tensor([0.5, 0.0])}
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return sum((keep(batch.feature(m), batch.present(m)) * self.w[m]).sum(1) for m in DIMS) + self.dummy


def _batch(n=40, seed=0):
    rng = np.random.default_rng(seed)
    feats = {m: rng.normal(size=(n, d)) for m, d in DIMS.items()}
    mask = np.ones((n, 3), bool)
    mask[:5, 1] = False
    risk = 2 * feats["expression"][:, 0] + feats["clinical"][:, 0]
    t = rng.exponential(500, n) * np.exp(-risk) + 1
    return make_batch(feats, mask, modalities=MODS, time_days=t, event=rng.random(n) < 0.8)


def test_integrated_gradients_equal_the_exact_attributions_of_a_linear_model():
    model, batch = Linear(), _batch()
    attr = integrated_gradients(model, batch, modalities=["expression", "proteins"], n_steps=8)
    x = batch.features["expression"].numpy() * batch.present("expression").numpy()[:, None]
    np.testing.assert_allclose(attr["expression"], x * np.array([2.0, -1.0, 0.0]), atol=1e-5)
    np.testing.assert_allclose(attr["proteins"], batch.features["proteins"].numpy() * [0.5, 0.0], atol=1e-5)
    assert np.all(attr["expression"][:5] == 0)  # masked patients: no attribution


def test_masking_drop_is_the_c_index_lost_without_the_modality():
    model, batch = Linear(), _batch()
    drop = masking_drop(model, batch)
    full = harrell_c(model(batch).detach().numpy(), time_days=batch.time_days.numpy(), event=batch.event.numpy())
    mask = batch.mask.clone()
    mask[:, 1] = False
    without = model(dataclasses.replace(batch, mask=mask)).detach().numpy()
    assert drop["expression"] == pytest.approx(full - harrell_c(without, time_days=batch.time_days.numpy(),
                                                                event=batch.event.numpy()))
    assert drop["expression"] > drop["proteins"]  # the planted risk is in expression and clinical


def test_attention_importance_of_fusion_models():
    batch = _batch()
    torch.manual_seed(0)
    late = build_model("late_fusion", task="survival_cox", modality_dims=DIMS, n_out=1).eval()
    with torch.no_grad():
        late.weight_logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    imp = attention_importance(late, batch)
    w = torch.softmax(torch.tensor([0.0, 1.0, -1.0]), 0)
    with torch.no_grad():
        weights = late.modality_weights(late.mask_of(batch))
    assert imp["clinical"] == pytest.approx(float(weights[:, 0].mean()))  # every patient has clinical
    assert imp["clinical"] > float(w[0])  # the 5 without expression give clinical more weight
    assert imp["expression"] == pytest.approx(float(w[1]), rel=1e-5)  # patients with everything: the plain softmax
    att = build_model("attention_fusion", task="survival_cox", modality_dims=DIMS, n_out=1).eval()
    imp = attention_importance(att, batch)
    assert set(imp) == set(MODS) and all(0 < v < 1 for v in imp.values())
    gnn = build_model("mm_gnn", task="survival_cox", modality_dims=DIMS, n_out=1).eval()
    imp = attention_importance(gnn, batch)
    assert sum(imp.values()) == pytest.approx(1.0, abs=0.15)  # cross-attention weights sum to 1 per patient
    assert attention_importance(build_model("early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1),
                                batch) is None


def test_interpret_fold_tables():
    model, batch = Linear(), _batch()
    from mmray.train.preprocess import Prepared

    prep = Prepared(features={m: batch.features[m].numpy() for m in MODS}, mask=batch.mask.numpy(), modalities=MODS,
                    patient_ids=[f"P{i}" for i in range(batch.size)], time_days=batch.time_days.numpy(),
                    event=batch.event.numpy())
    names = {"clinical": ["clinical__a", "clinical__b"], "expression": ["expression__MKI67", "expression__CD8A",
                                                                        "expression__X"],
             "proteins": ["proteins__Ki-67", "proteins__AKT1_pS473"]}
    t = interpret_fold(model, cols=D.prepared_columns(prep), dims=DIMS, feature_names=names, fold=3,
                       protein_genes={"Ki-67": "MKI67"}, ig_steps=8)
    g = t["gene_importance"].set_index("feature")
    assert g.loc["proteins__Ki-67", "gene"] == "MKI67" and g.loc["proteins__AKT1_pS473", "gene"] == "AKT1"
    assert g.loc["expression__MKI67", "rank"] == 1 and g.loc["expression__X", "importance"] == 0
    m = t["modality_importance"]
    assert set(m["method"]) == {"masking_drop"} and (m["fold"] == 3).all()
    assert gene_of_feature("cnv__MYC") == "MYC"


def _gene_imp():
    rows = []
    for fold, imps in enumerate([{"A": 3, "B": 1, "C": 0}, {"A": 1, "B": 1, "D": 2}]):
        rows += [{"fold": fold, "gene": g, "feature": f"expression__{g}", "modality": "expression",
                  "importance": float(v)} for g, v in imps.items()]
    rows.append({"fold": 0, "gene": "A", "feature": "proteins__pA", "modality": "proteins", "importance": 1.0})
    return pd.DataFrame(rows)


def test_gene_ranking_and_stability():
    r = gene_ranking(_gene_imp()).set_index("gene")
    # fold 0: A = (3 + 1) / 5, B = 1/5; fold 1: A = 1/4, B = 1/4, D = 2/4; averaged over both folds
    assert r.loc["A", "importance"] == pytest.approx((0.8 + 0.25) / 2)
    assert r.loc["D", "importance"] == pytest.approx(0.25) and r.loc["D", "folds_selected"] == 1
    assert r.loc["A", "rank"] == 1 and r.loc["A", "modalities"] == "expression,proteins"
    s = stability(_gene_imp(), top_k=2)
    assert s["top_k_overlap"] == pytest.approx(0.5)  # {A, B} vs {D, A or B}: one shared of two
    assert s["n_folds"] == 2


def test_summaries_by_run_key():
    gi = _gene_imp().assign(task="survival_cox", model="mm_gnn", modality_set="all", repeat=0)
    mi = pd.DataFrame({"fold": [0, 1, 0, 1], "modality": ["clinical", "clinical", "expression", "expression"],
                       "method": "masking_drop", "value": [0.01, 0.03, 0.10, 0.06]}).assign(
        task="survival_cox", model="mm_gnn", modality_set="all", repeat=0)
    out = summarize_interpretation({"gene_importance": gi, "modality_importance": mi},
                                   gene_sets={"S1": {"A", "D"}, "S2": {"B", "C", "X"}}, top_k=2)
    assert set(out) == {"gene_ranking", "gene_stability", "enrichment", "modality_summary"}
    ms = modality_summary(mi).set_index("modality")
    assert ms.loc["expression", "rank"] == 1 and ms.loc["clinical", "mean"] == pytest.approx(0.02)
    assert (out["enrichment"]["model"] == "mm_gnn").all()
