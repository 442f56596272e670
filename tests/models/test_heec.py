"""HEEC: the LightGBM Cox objective, fits that beat random, genomics screening, tracing to slide locations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmray.errors import DataError, UnknownNameError
from mmray.models.heec import HEEC, default_feature_of, trace_importances
from mmray.models.lgbm_cox import cox_grad_hess, cox_nll, decode_label, encode_label
from mmray.models.losses import cox_ph_loss
from mmray.synth.arrays import planted_cohort, simple_cohort
from mmray.train.metrics import balanced_accuracy, harrell_c


@pytest.fixture(scope="module")
def tied():
    rng = np.random.default_rng(4)
    n = 40
    return rng.normal(size=n), rng.integers(1, 9, size=n).astype(float), rng.random(n) < 0.6


def test_cox_objective_gradient_and_hessian_match_finite_differences(tied):
    eta, time, event = tied
    grad, hess = cox_grad_hess(eta, time_days=time, event=event)
    eps = 1e-5
    eye = np.eye(eta.size)
    lab = {"time_days": time, "event": event}
    num_grad = np.array([(cox_nll(eta + eps * e, **lab) - cox_nll(eta - eps * e, **lab)) / (2 * eps) for e in eye])
    num_hess = np.array([(cox_grad_hess(eta + eps * e, **lab)[0][k] - cox_grad_hess(eta - eps * e, **lab)[0][k])
                         / (2 * eps) for k, e in enumerate(eye)])
    np.testing.assert_allclose(grad, num_grad, atol=1e-6)
    np.testing.assert_allclose(hess, num_hess, atol=1e-6)
    assert (hess > 0).all()


def test_cox_objective_is_the_breslow_partial_likelihood(tied):
    eta, time, event = tied
    torch_loss = cox_ph_loss(torch.tensor(eta), time_days=torch.tensor(time), event=torch.tensor(event), ties="breslow")
    assert cox_nll(eta, time_days=time, event=event) == pytest.approx(torch_loss.item() * event.sum(), rel=1e-10)
    # shift invariance (stable exp) at extreme scores
    g1, h1 = cox_grad_hess(eta + 700.0, time_days=time, event=event)
    g0, h0 = cox_grad_hess(eta, time_days=time, event=event)
    np.testing.assert_allclose(g1, g0, atol=1e-9)
    np.testing.assert_allclose(h1, h0, atol=1e-9)


def test_label_encoding_round_trip():
    t, e = decode_label(encode_label([5.0, 7.0, 2.0], [True, False, True]))
    assert t.tolist() == [5.0, 7.0, 2.0] and e.tolist() == [True, False, True]
    with pytest.raises(DataError, match="> 0"):
        encode_label([0.0, 3.0], [True, False])


def _features(tab):
    return tab[[c for c in tab.columns if "__" in c or c.startswith("has_")]]


def test_heec_survival_beats_random_and_keeps_the_planted_genes():
    c = simple_cohort(400, seed=4, dims={"clinical": 3, "expression": 60, "slide": 6}, effect=1.0)
    tab = c.table()
    X, tr, te = _features(tab), np.arange(300), np.arange(300, 400)
    model = HEEC(task="survival_cox", num_threads=1, n_estimators=200).fit(
        X.iloc[tr], time_days=c.time_days[tr], event=c.event[tr])
    risk = model.predict(X.iloc[te])
    assert harrell_c(risk, time_days=c.time_days[te], event=c.event[te]) > 0.65
    kept = [f for f in model.features_ if f.startswith("expression__")]
    assert "expression__f0" in kept  # the planted risk gene
    assert len(kept) < 20  # most of the 60 noise genes dropped
    assert set(model.genomic_p_values_.index) == {f"expression__f{j}" for j in range(60)}
    imp = model.feature_importance()
    assert imp.index[0] in {"clinical__f0", "expression__f0", "wsi_patient__f0"} and imp.iloc[0] > 0


def test_heec_survival_early_stops_on_validation_c_index():
    c = simple_cohort(300, seed=8, dims={"clinical": 3, "expression": 10}, effect=1.0)
    X = _features(c.table())
    model = HEEC(task="survival_cox", num_threads=1, n_estimators=400, early_stopping_rounds=20).fit(
        X.iloc[:200], time_days=c.time_days[:200], event=c.event[:200],
        X_val=X.iloc[200:], time_days_val=c.time_days[200:], event_val=c.event[200:])
    assert 0 < model.booster_.best_iteration < 400


def test_heec_subtype_on_the_synthetic_cohort_table():
    c = planted_cohort(300, seed=2, n_expression=80)
    tab = c.table()  # NaN where a modality is missing: LightGBM handles it
    X = _features(tab)
    model = HEEC(task="subtype", n_classes=3, num_threads=1, n_estimators=150).fit(X.iloc[:220], y=c.subtype[:220])
    proba = model.predict(X.iloc[220:])
    assert proba.shape == (80, 3) and np.allclose(proba.sum(1), 1.0)
    assert balanced_accuracy(c.subtype[220:], proba.argmax(1)) > 0.5  # chance 1/3
    with pytest.raises(DataError, match="class indices"):
        HEEC(task="subtype", n_classes=3).fit(X.iloc[:10], y=np.full(10, 3))
    with pytest.raises(UnknownNameError):
        HEEC(task="grading")


def test_trace_importances_returns_the_extremum_coordinates():
    importance = pd.Series({"wsi_patient__tile_max_17": 50.0, "expression__TP53": 80.0,
                            "wsi_patient__region_min_3": 20.0, "wsi_patient__tile_mean_17": 90.0,
                            "wsi_patient__tile_min_2": 0.0, "wsi_patient__region_max_1": 5.0})
    coords = pd.DataFrame([
        ("S1", "tile_max_17", 1024, 512, "P1"), ("S2", "tile_max_17", 256, 0, "P2"),
        ("S1", "region_min_3", 4096, 8192, "P1"), ("S1", "tile_min_2", 7, 7, "P1"),
        ("S2", "region_max_1", 0, 4096, "P2"),
    ], columns=["slide_id", "feature", "x", "y", "patient_id"])
    out = trace_importances(importance, coords, top_k=2)
    # tile_mean and expression have no location; zero importance is skipped; top 2 located features
    assert out[["slide_id", "x", "y", "importance", "feature"]].values.tolist() == [
        ["S1", 1024, 512, 50.0, "tile_max_17"], ["S2", 256, 0, 50.0, "tile_max_17"],
        ["S1", 4096, 8192, 20.0, "region_min_3"]]
    assert out["patient_id"].tolist() == ["P1", "P2", "P1"]
    assert len(trace_importances(importance, coords, top_k=10)) == 4
    # another naming scheme via the mapping function
    custom = trace_importances(pd.Series({"slide_max17": 3.0}), coords, top_k=1,
                               feature_of=lambda c: "tile_max_17" if c == "slide_max17" else None)
    assert custom[["slide_id", "x", "y"]].values.tolist() == [["S1", 1024, 512], ["S2", 256, 0]]
    assert default_feature_of("wsi_patient__tile_mean_4") is None
    with pytest.raises(DataError, match="slide_id"):
        trace_importances(importance, coords.drop(columns="x"))


def test_heec_importance_traces_to_slide_locations_end_to_end():
    rng = np.random.default_rng(0)
    n = 200
    signal = rng.normal(size=n)
    X = pd.DataFrame({"wsi_patient__tile_max_0": signal + 0.3 * rng.normal(size=n),
                      "wsi_patient__tile_max_1": rng.normal(size=n),
                      "clinical__age": rng.normal(size=n)})
    t = rng.exponential(size=n) * np.exp(-1.5 * signal) * 500 + 1
    e = rng.random(n) < 0.8
    model = HEEC(task="survival_cox", num_threads=1, n_estimators=100).fit(X, time_days=t, event=e)
    coords = pd.DataFrame({"slide_id": ["A", "A"], "feature": ["tile_max_0", "tile_max_1"], "x": [10, 20],
                           "y": [30, 40]})
    top = trace_importances(model.feature_importance(), coords, top_k=1)
    assert top[["slide_id", "x", "y", "feature"]].values.tolist() == [["A", 10, 30, "tile_max_0"]]


def test_screen_encode_label_are_the_pieces_a_distributed_trainer_uses():
    import lightgbm as lgb

    c = simple_cohort(200, seed=9, dims={"clinical": 2, "expression": 30}, effect=1.0)
    X = _features(c.table())
    whole = HEEC(task="survival_cox", num_threads=1, n_estimators=50).fit(X, time_days=c.time_days, event=c.event)
    parts = HEEC(task="survival_cox", num_threads=1, n_estimators=50)
    cols = parts.screen_columns(X, time_days=c.time_days, event=c.event)
    assert cols == whole.features_ and list(parts.encode(X).columns) == cols
    lab = parts.label(time_days=c.time_days, event=c.event)
    parts.booster_ = lgb.train(parts.params, lgb.Dataset(parts.encode(X).to_numpy(), label=lab),
                               num_boost_round=50)
    np.testing.assert_allclose(parts.predict(X), whole.predict(X))
