"""The fold's feature graph for mm_gnn: prior-knowledge edges by symbol, correlation edges from the fit rows only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmray.models.batch import make_batch
from mmray.models.registry import build_model
from mmray.train.fold_fit import FoldSettings, fold_rows, prepare_torch_fold
from mmray.train.fold_graph import build_fold_graph, correlation_edges, edge_table
from mmray.train.folds import make_folds
from mmray.train.preprocess import Preprocessor

GENES = ("MKI67", "CCNB1", "PLK1", "CD8A", "GZMB", "NOISE1", "NOISE2")


def _table(n=90, seed=0) -> pd.DataFrame:
    """Expression with two correlated blocks (proliferation, immune), a mutation, two proteins, clinical."""
    rng = np.random.default_rng(seed)
    prolif, immune = rng.normal(size=n), rng.normal(size=n)
    out = {"patient_id": [f"P{i:03d}" for i in range(n)]}
    for g in GENES:
        base = prolif if g in ("MKI67", "CCNB1", "PLK1") else immune if g in ("CD8A", "GZMB") else 0
        out[f"expression__{g}"] = base + 0.4 * rng.normal(size=n)
    out["mutations__MKI67"] = (rng.random(n) < 0.3).astype(float)
    out["proteins__Ki-67"] = prolif + 0.5 * rng.normal(size=n)
    out["proteins__CD8"] = immune + 0.5 * rng.normal(size=n)
    age = rng.normal(size=n)
    out["clinical__age"] = age
    out["clinical__age_months"] = 12 * age + 0.1 * rng.normal(size=n)
    out["clinical__weight"] = rng.normal(size=n)
    for g in ("expression", "mutations", "proteins", "clinical"):
        out[f"has_{g}"] = np.ones(n, bool)
    risk = prolif - immune
    out["time_days"] = np.round(rng.exponential(600, n) * np.exp(-risk)) + 1
    out["event"] = rng.random(n) < 0.7
    return pd.DataFrame(out)


INTERACTIONS = pd.DataFrame({"source": ["CCNB1", "MKI67", "CD8A", "MKI67", "NOISE1"],
                             "target": ["MKI67", "PLK1", "GZMB", "CD8A", "NOISE2"],
                             "type": ["ppi", "regulates", "ppi", "ppi", "ppi"], "score": [0.9, 0.8, 0.95, 0.2, 0.6]})
PROTEIN_GENES = {"Ki-67": "MKI67", "CD8": "CD8A"}
MODS = ("clinical", "expression", "mutations_cnv", "proteins")


def _edges(graph, key):
    e = graph["edges"].get(key, {"src": [], "dst": []})
    nodes = graph["nodes"][key.split("|")[0]], graph["nodes"][key.split("|")[2]]
    return {(nodes[0][a], nodes[1][b]) for a, b in zip(e["src"], e["dst"])}


def test_prior_edges_by_symbol_with_score_filter():
    t = _table()
    pre = Preprocessor(task="survival_cox", modalities=MODS, top_k_var={}).fit(t)
    g = build_fold_graph(pre, pre.transform(t), interactions=INTERACTIONS, protein_genes=PROTEIN_GENES,
                         corr_threshold=0.99, min_score=0.4)
    assert _edges(g, "gene|ppi|gene") == {("CCNB1", "MKI67"), ("MKI67", "CCNB1"), ("CD8A", "GZMB"), ("GZMB", "CD8A"),
                                          ("NOISE1", "NOISE2"), ("NOISE2", "NOISE1")}  # MKI67-CD8A: score 0.2 < 0.4
    assert _edges(g, "gene|regulates|gene") == {("MKI67", "PLK1")}  # directed
    assert _edges(g, "gene|codes_for|protein") == {("MKI67", "Ki-67"), ("CD8A", "CD8")}  # by symbol, via the map
    assert _edges(g, "protein|coded_by|gene") == {("Ki-67", "MKI67"), ("CD8", "CD8A")}
    assert _edges(g, "protein|ppi|protein") == set()  # their genes do not interact above min_score
    # expression and the mutation of MKI67 land on one gene node, in channels 0 and 1
    inp = g["inputs"]
    mki = g["nodes"]["gene"].index("MKI67")
    assert inp["mutations_cnv"]["index"] == [mki] and inp["mutations_cnv"]["channel"] == [1]
    assert inp["expression"]["index"][list(pre.blocks_["expression"].feature_names_).index("expression__MKI67")] == mki
    tab = edge_table(g, fold=2)
    assert set(tab.columns) == {"fold", "relation", "source", "target", "weight"} and (tab["fold"] == 2).all()
    # the graph drives a model
    model = build_model("mm_gnn", task="survival_cox", modality_dims=pre.dims, n_out=1, graph=g).eval()
    p = pre.transform(t.head(5))
    assert model(make_batch(p.features, p.mask, modalities=p.modalities)).shape == (5,)


def test_correlation_edges_follow_the_data():
    t = _table()
    pre = Preprocessor(task="survival_cox", modalities=MODS, top_k_var={}).fit(t)
    g = build_fold_graph(pre, pre.transform(t), corr_threshold=0.6, corr_top_k=3)
    corr = _edges(g, "gene|corr|gene")
    assert ("MKI67", "CCNB1") in corr and ("CD8A", "GZMB") in corr
    assert not any({"NOISE1", "NOISE2"} & {a, b} for a, b in corr)
    assert ("clinical__age", "clinical__age_months") in _edges(g, "clinical|corr|clinical")
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[:, 1] = x[:, 0] + 0.01 * x[:, 1]
    assert correlation_edges(x, threshold=0.9, top_k=2) == [(0, 1, pytest.approx(1.0, abs=1e-3))]


def test_correlation_edges_are_fitted_inside_the_training_fold():
    """Scrambling the test fold's values leaves the fold's graph unchanged; scrambling the fit rows does not."""
    t = _table(seed=3)
    folds = make_folds(t, n_folds=3, seed=0, site_col=None)
    settings = FoldSettings(executor="local", top_k_var={}, screen={})
    rows = fold_rows(t, folds, fold=1, val_fraction=0.2, seed=0)

    def graph(r):
        return prepare_torch_fold(model="mm_gnn", hparams={"corr_threshold": 0.3}, task="survival_cox", modalities=MODS,
                                  rows=r, fold=1, classes=None, settings=settings).spec.hparams["graph"]

    base = graph(rows)
    assert base["edges"]["gene|corr|gene"]["src"]  # not vacuous: there are correlation edges
    rng = np.random.default_rng(9)
    value_cols = [c for c in t.columns if c.startswith(("expression__", "clinical__", "proteins__", "mutations__"))]

    def scrambled(frame):
        out = frame.copy()
        for c in value_cols:
            out[c] = rng.permutation(out[c].to_numpy()) * 3.0 + rng.normal(size=len(out))
        return out

    test_scrambled = type(rows)(fit=rows.fit, val=rows.val, test=scrambled(rows.test))
    assert graph(test_scrambled)["edges"] == base["edges"]
    fit_scrambled = type(rows)(fit=scrambled(rows.fit), val=rows.val, test=rows.test)
    assert graph(fit_scrambled)["edges"].get("gene|corr|gene") != base["edges"]["gene|corr|gene"]
