"""Fold-fitted selection and scaling: right numbers, and fitted on training rows only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline

from mmray.errors import DataError
from mmray.features.clinical import FoldImputer
from mmray.features.selection import CorrelationFilter, StandardScalerByGene, VarianceTopK, cox_score_z


def _frame(n=60, p=8, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * np.arange(1, p + 1)  # column j has sd j+1
    return pd.DataFrame(X, index=[f"P{i:03d}" for i in range(n)], columns=[f"g{j}" for j in range(p)])


def test_variance_top_k_keeps_the_most_variable_columns():
    X = _frame()
    sel = VarianceTopK(3).fit(X)
    assert list(sel.transform(X).columns) == ["g5", "g6", "g7"]
    np.testing.assert_allclose(sel.variances_, X.var(ddof=0).to_numpy())
    assert sel.transform(X.to_numpy()).shape == (60, 3)
    assert list(sel.get_feature_names_out()) == ["g5", "g6", "g7"]
    with pytest.raises(DataError, match="positive integer"):
        VarianceTopK(0).fit(X)


def test_scaler_uses_training_statistics_and_keeps_nan():
    X = _frame()
    train, test = X.iloc[:40], X.iloc[40:].copy()
    test.iloc[0, 0] = np.nan
    sc = StandardScalerByGene().fit(train)
    np.testing.assert_allclose(sc.mean_, train.mean().to_numpy())
    np.testing.assert_allclose(sc.scale_, train.std(ddof=0).to_numpy())
    out = sc.transform(test)
    col = train.iloc[:, 1]
    np.testing.assert_allclose(out.iloc[1:, 1], (test.iloc[1:, 1] - col.mean()) / col.std(ddof=0))
    assert np.isnan(out.iloc[0, 0])
    const = StandardScalerByGene().fit(pd.DataFrame({"c": [2.0, 2.0, 2.0]}))
    assert const.transform(pd.DataFrame({"c": [3.0]})).iloc[0, 0] == 1.0  # zero sd -> scale 1
    with pytest.raises(DataError, match="fitted on 8 features"):
        sc.transform(X.iloc[:, :3])


def test_correlation_filter_matches_scipy():
    X = _frame(n=80, p=6, seed=1)
    rng = np.random.default_rng(2)
    y = 2.0 * X["g0"] + 0.3 * X["g3"] + rng.normal(size=80)
    for method, ref in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        f = CorrelationFilter(method, max_p=0.01).fit(X, y)
        want = [ref(X[c], y) for c in X.columns]
        np.testing.assert_allclose(f.scores_, [abs(w[0]) for w in want], rtol=1e-9)
        np.testing.assert_allclose(f.p_values_, [w[1] for w in want], rtol=1e-6, atol=1e-12)
        assert set(f.transform(X).columns) == {c for c, w in zip(X.columns, want) if w[1] <= 0.01}
    top = CorrelationFilter("pearson", max_p=None, top_k=2).fit(X, y)
    assert list(top.transform(X).columns)[0] == "g0" and top.support_indices_.size == 2


def test_anova_and_keep_best_when_nothing_passes():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 20)
    X = pd.DataFrame({"signal": y + rng.normal(0, 0.3, 60), "noise": rng.normal(size=60)})
    f = CorrelationFilter("anova", max_p=0.001).fit(X, y)
    assert list(f.transform(X).columns) == ["signal"]
    none = CorrelationFilter("pearson", max_p=1e-12).fit(X[["noise"]], rng.normal(size=60))
    assert none.kept_best_only_ and none.support_indices_.tolist() == [0]


def test_cox_score_test_agrees_with_lifelines():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(4)
    n = 200
    X = pd.DataFrame({"harm": rng.normal(size=n), "protect": rng.normal(size=n), "noise": rng.normal(size=n)})
    hazard = np.exp(0.8 * X["harm"] - 0.5 * X["protect"])
    t_event = rng.exponential(1000 / hazard)
    t_cens = rng.uniform(300, 3000, n)
    time = np.round(np.minimum(t_event, t_cens))  # rounded: ties, handled as Breslow
    event = t_event <= t_cens
    z = cox_score_z(X.to_numpy(), time, event)
    for j, col in enumerate(X.columns):
        cph = CoxPHFitter().fit(pd.DataFrame({"x": X[col], "T": time, "E": event}), "T", "E")
        wald_z = float(cph.summary.loc["x", "z"])
        assert abs(z[j] - wald_z) < 0.05  # score test at beta=0 ~ Wald test here (8.47 vs 8.45, -3.23 vs -3.24)
    assert z[0] > 8 and z[1] < -3 and abs(z[2]) < 1.5  # harmful +, protective -, noise ~0
    f = CorrelationFilter("cox", max_p=0.01).fit(X, (time, event))
    assert list(f.transform(X).columns) == ["harm", "protect"]
    structured = np.array(list(zip(event, time)), dtype=[("event", bool), ("time", float)])
    np.testing.assert_allclose(CorrelationFilter("cox").fit(X, structured).scores_, np.abs(z))
    with pytest.raises(DataError, match="survival target"):
        CorrelationFilter("cox").fit(X, time)


def test_transforms_inside_cross_validation_see_training_rows_only():
    X = _frame(n=50, p=30, seed=5)
    y = (X["g29"] + np.random.default_rng(6).normal(size=50) > 0).astype(int).to_numpy()
    pipe = make_pipeline(FoldImputer(), VarianceTopK(10), CorrelationFilter("spearman", max_p=None, top_k=5),
                         StandardScalerByGene(), LogisticRegression())
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    res = cross_validate(pipe, X, y, cv=cv, return_estimator=True)
    for est, (train, test) in zip(res["estimator"], cv.split(X, y)):
        for step in est.steps[:-1]:
            seen = set(step[1].fit_index_)
            assert seen == set(X.index[train]), step[0]
            assert not seen & set(X.index[test])


def test_selecting_on_the_whole_cohort_inflates_cv_but_fold_fitting_does_not():
    """Pure noise: picking the label-correlated genes first is the classic leak."""
    rng = np.random.default_rng(7)
    X = pd.DataFrame(rng.normal(size=(60, 2000)))
    y = np.repeat([0, 1], 30)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    leaky_cols = CorrelationFilter("pearson", max_p=None, top_k=20).fit(X, y).transform(X)
    leaky = cross_val_score(LogisticRegression(), leaky_cols, y, cv=cv, scoring="roc_auc").mean()
    honest = cross_val_score(make_pipeline(CorrelationFilter("pearson", max_p=None, top_k=20), LogisticRegression()),
                             X, y, cv=cv, scoring="roc_auc").mean()
    assert leaky > 0.85
    assert honest < 0.7


def test_fold_imputer_fills_with_training_medians():
    train = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "b": [np.nan] * 4})
    imp = FoldImputer().fit(train)
    np.testing.assert_allclose(imp.statistics_, [3.0, 0.0])
    out = imp.transform(pd.DataFrame({"a": [np.nan, 5.0], "b": [np.nan, 1.0]}))
    assert out.to_dict("list") == {"a": [3.0, 5.0], "b": [0.0, 1.0]}
    assert list(imp.fit_index_) == [0, 1, 2, 3]
