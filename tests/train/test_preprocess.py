"""Fold-safe preprocessing: fitted on training rows that have the modality, labels of held-out rows unseen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmray.errors import DataError
from mmray.models.registry import build_model
from mmray.synth.arrays import planted_cohort
from mmray.train.folds import make_folds, split
from mmray.train.preprocess import ModalityLayout, Preprocessor, prepare_fold


@pytest.fixture(scope="module")
def table():
    tab = planted_cohort(240, seed=1, n_expression=40).table()
    tab["clinical__event_time"] = "2010-01-01"  # join metadata: never a feature
    return tab


@pytest.fixture(scope="module")
def folds(table):
    return make_folds(table, n_folds=4, seed=0)


def _same_state(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, list, tuple)) and len(a) and not isinstance(a[0], str):
        return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return a == b if not isinstance(a, np.ndarray) else np.array_equal(a, b)


def test_layout_maps_groups_to_modalities(table):
    L = ModalityLayout()
    assert L.modalities_in(table) == ["clinical", "expression", "mutations_cnv", "radiomics", "slide"]
    assert "clinical__event_time" not in L.columns(table, "clinical")
    mc = L.columns(table, "mutations_cnv")
    assert any(c.startswith("mutations__") for c in mc) and any(c.startswith("cnv__") for c in mc)
    t = table.assign(has_mutations=False, has_cnv=[i % 2 == 0 for i in range(len(table))])
    assert L.present(t, "mutations_cnv").tolist() == t.has_cnv.tolist()
    with pytest.raises(DataError, match="proteomics"):
        L.columns(table, "proteomics")


def test_rows_without_the_modality_are_not_fitted_and_come_out_masked(table):
    pre = Preprocessor(task="survival_cox").fit(table)
    junk = table.copy()
    absent = ~junk.has_expression.to_numpy()
    assert absent.any()
    cols = [c for c in junk.columns if c.startswith("expression__")]
    junk.loc[absent, cols] = 1e6  # values in rows flagged missing
    assert _same_state(pre.state(), Preprocessor(task="survival_cox").fit(junk).state())
    out = pre.transform(junk)
    j = out.modalities.index("expression")
    assert out.mask[:, j].tolist() == (~absent).tolist()
    assert (out.features["expression"][absent] == 0).all()


def test_median_imputation_and_scaling_fitted_on_training_rows(table, folds):
    tr, va = split(table, folds, fold=0)
    train = table.iloc[tr].copy()
    col = "radiomics__f0"
    present = train.has_radiomics.to_numpy()
    train.iloc[np.flatnonzero(present)[:5], train.columns.get_loc(col)] = np.nan  # holes inside a present modality
    pre = Preprocessor(task="survival_cox").fit(train)
    out = pre.transform(train)
    x = out.features["radiomics"][:, 0][present]
    vals = train.loc[present, col]
    med = vals.median()
    filled = vals.fillna(med)
    np.testing.assert_allclose(x, (filled - filled.mean()) / filled.std(ddof=0), rtol=1e-5, atol=1e-5)
    held_out = pre.transform(table.iloc[va]).features["radiomics"]
    assert held_out.shape[1] == out.features["radiomics"].shape[1]


def test_label_screening_sees_training_labels_only(table, folds):
    def fitted(tab):
        pre = Preprocessor(task="survival_cox", screen={"expression": {"max_p": 0.2, "top_k": 10}})
        return prepare_fold(tab, folds, fold=1, preprocessor=pre)

    pre, train, _ = fitted(table)
    assert 1 <= train.dims["expression"] <= 10
    tr, va = split(table, folds, fold=1)
    rng = np.random.default_rng(0)
    shuffled = table.copy()
    perm = rng.permutation(va)
    shuffled.loc[shuffled.index[va], ["time_days", "event"]] = table.iloc[perm][["time_days", "event"]].to_numpy()
    assert not shuffled.time_days.equals(table.time_days)
    assert _same_state(pre.state(), fitted(shuffled)[0].state())  # held-out labels changed, fit identical
    # not vacuous: permuting the *training* labels does change the screening
    shuffled_tr = table.copy()
    perm = rng.permutation(tr)
    shuffled_tr.loc[shuffled_tr.index[tr], ["time_days", "event"]] = table.iloc[perm][["time_days", "event"]].to_numpy()
    assert not _same_state(pre.state(), fitted(shuffled_tr)[0].state())


def test_subtype_classes_and_categorical_columns(table, folds):
    tab = table.assign(clinical__smoking=np.where(np.arange(len(table)) % 3 == 0, "Never", "Current"))
    tab.loc[tab.index[:4], "clinical__smoking"] = None
    pre = Preprocessor(task="subtype", top_k_var={}).fit(tab)
    out = pre.transform(tab)
    assert pre.subtype_classes == ("adenocarcinoma", "large_cell", "squamous_cell")
    assert set(out.subtype) <= {0, 1, 2}
    names = pre.blocks_["clinical"].feature_names_
    assert "clinical__smoking=Never" in names and "clinical__smoking=Current" in names
    bad = tab.assign(subtype="mesothelioma")
    with pytest.raises(DataError, match="mesothelioma"):
        pre.transform(bad)


def test_prepared_rows_feed_a_model(table, folds):
    pre, train, val = prepare_fold(table, folds, fold=2, preprocessor=Preprocessor(task="survival_cox"))
    model = build_model("early_fusion", task="survival_cox", modality_dims=pre.dims, n_out=1).eval()
    batch = val.batch()
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (len(val.patient_ids),) and torch.isfinite(out).all()
    assert batch.time_days is not None and batch.event.dtype == torch.bool
    ds = train.dataset()
    assert len(ds) == len(train.patient_ids) and ds.dims == pre.dims


def test_ct_embedding_columns_are_the_ct_deep_modality_and_its_bookkeeping_is_not():
    tab = pd.DataFrame({"patient_id": ["a", "b"], "has_ct_embedding": [True, False],
                        **{f"ct_embedding__emb_{i:03d}": [0.1 * i, np.nan] for i in range(3)},
                        **{f"ct_embedding__{c}": ["x", None] for c in ("encoder_id", "signature", "study_key",
                                                                      "ct_series_key", "source_sha256")},
                        "ct_embedding__crop_mask_voxels": [812, None], "radiomics__original_shape_VoxelVolume": [1.0, 2.0]})
    L = ModalityLayout()
    assert L.columns(tab, "ct_deep") == [f"ct_embedding__emb_{i:03d}" for i in range(3)]
    assert L.present(tab, "ct_deep").tolist() == [True, False]
    assert L.modalities_in(tab) == ["radiomics", "ct_deep"]


def test_pca_summarises_an_embedding_modality_fitted_on_training_rows_only():
    rng = np.random.default_rng(0)
    n, d = 120, 64
    latent = rng.normal(size=(n, 2))
    emb = latent @ rng.normal(size=(2, d)) + 0.05 * rng.normal(size=(n, d))  # two directions + noise
    tab = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "time_days": rng.uniform(100, 900, n),
                        "event": rng.random(n) < 0.6, "has_ct_embedding": True,
                        **{f"ct_embedding__emb_{j:03d}": emb[:, j] for j in range(d)}})
    pre = Preprocessor(task="survival_cox", modalities=["ct_deep"], pca={"ct_deep": 4}).fit(tab.iloc[:80])
    out = pre.transform(tab).features["ct_deep"]
    assert out.shape == (n, 4) and pre.dims == {"ct_deep": 4}
    assert pre.blocks_["ct_deep"].feature_names_ == ["pc1", "pc2", "pc3", "pc4"]
    np.testing.assert_allclose(out[:80].std(axis=0, ddof=1), 1.0, atol=1e-4)  # whitened on the fit rows
    # the two planted directions are the first two components: they explain the held-out rows too
    from sklearn.linear_model import LinearRegression
    assert LinearRegression().fit(out[80:, :2], latent[80:]).score(out[80:, :2], latent[80:]) > 0.99
    assert pre.state()["ct_deep"]["pca_components"].shape == (4, d)
