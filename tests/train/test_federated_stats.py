"""Federated preprocessing against the pooled fit, order statistics, FedAvg, pooled C, the egress check (no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sksurv.metrics import concordance_index_censored

from mmray.features.selection import CorrelationFilter
from mmray.models.losses import TimeBins
from mmray.train.federated_rounds import fedavg, pooled_c
from mmray.train.federated_site import SiteData
from mmray.train.federated_stats import FederatedPreprocessing, order_stats, pooled_quantiles, site_moments
from mmray.train.federated_wire import EgressError, check_outbound
from mmray.train.preprocess import ModalityLayout, Preprocessor


def _table(n: int, seed: int, *, prefix: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 30)) * rng.uniform(0.2, 3.0, size=30) + rng.normal(size=30)
    x[rng.random(x.shape) < 0.1] = np.nan
    risk = np.nan_to_num(x[:, 0]) - 0.8 * np.nan_to_num(x[:, 3])
    t = np.round(rng.exponential(900 * np.exp(-0.5 * risk)) + 1)  # whole days: ties in the risk sets
    frame = pd.DataFrame({"patient_id": [f"{prefix}-{i:03d}" for i in range(n)], "time_days": t,
                          "event": rng.random(n) < 0.7})
    for j in range(x.shape[1]):
        frame[f"expression__G{j}"] = x[:, j]
    frame["clinical__age"] = np.where(rng.random(n) < 0.15, np.nan, rng.normal(60, 9, n).round())
    frame["clinical__stage"] = rng.choice(["I", "II", "III", None], size=n)
    frame["has_clinical"] = rng.random(n) < 0.9
    frame["has_expression"] = rng.random(n) < 0.85
    return frame


def _site(name: str, table: pd.DataFrame) -> SiteData:
    """A SiteData over an in-memory table (its store-reading constructor is skipped); every row trains."""
    s = SiteData.__new__(SiteData)
    s.name, s.task, s.modalities, s.layout = name, "survival_discrete", ("clinical", "expression"), ModalityLayout()
    s.table, s._identifiers, s._setups, s._encoding = table, set(table["patient_id"]), {}, {}
    s.drop_rounds, s.drop_prob, s.seed = set(), 0.0, 0
    s._rows = {0: {"fit": table, "val": table.iloc[:0], "test": table.iloc[:0]}}
    return s


def _fed(sites, **kw) -> FederatedPreprocessing:
    def ask(method, **kwargs):
        return [getattr(s, method)(fold=0, **kwargs) for s in sites]
    return FederatedPreprocessing(ask, task="survival_discrete", modalities=("clinical", "expression"), **kw)


def _assert_same(fed: Preprocessor, ref: Preprocessor, table: pd.DataFrame) -> None:
    for m in ("clinical", "expression"):
        a, b = fed.blocks_[m], ref.blocks_[m]
        assert a.feature_names_ == b.feature_names_
        assert a.levels_ == b.levels_
        np.testing.assert_allclose(a.imputer_.statistics_, b.imputer_.statistics_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a.scaler_.mean_, b.scaler_.mean_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a.scaler_.scale_, b.scaler_.scale_, rtol=1e-9)
    np.testing.assert_allclose(fed.transform(table).features["expression"],
                               ref.transform(table).features["expression"], rtol=1e-6, atol=1e-6)


def test_pooled_statistics_equal_the_pooled_fit():
    """Three sites without screening: medians, variance top-k, scaling and one-hot levels are the pooled fit's."""
    tables = [_table(40, 1, prefix="A"), _table(55, 2, prefix="B"), _table(31, 3, prefix="C")]
    tables[2]["clinical__stage"] = tables[2]["clinical__stage"].replace("III", "IV")  # a level only one site has
    pooled = pd.concat(tables, ignore_index=True)
    fed = _fed([_site(n, t) for n, t in zip("ABC", tables)], top_k_var={"expression": 12}).fit()
    ref = Preprocessor(ModalityLayout(), task="survival_discrete", modalities=("clinical", "expression"),
                       top_k_var={"expression": 12}).fit(pooled)
    assert "clinical__stage=IV" in fed.blocks_["clinical"].feature_names_
    np.testing.assert_array_equal(fed.blocks_["expression"].var_.support_indices_,
                                  ref.blocks_["expression"].var_.support_indices_)
    _assert_same(fed, ref, pooled)


def test_one_site_with_screening_is_the_centralised_fit():
    """With one site the stratified score test is the pooled one: the same genes pass the screen."""
    table = _table(120, 4, prefix="A")
    screen = {"expression": {"max_p": 0.05, "top_k": 5}}
    fed = _fed([_site("A", table)], top_k_var={"expression": 20}, screen=screen).fit()
    ref = Preprocessor(ModalityLayout(), task="survival_discrete", modalities=("clinical", "expression"),
                       top_k_var={"expression": 20}, screen=screen).fit(table)
    np.testing.assert_allclose(fed.blocks_["expression"].filter_.scores_, ref.blocks_["expression"].filter_.scores_,
                               rtol=1e-8)
    assert "expression__G0" in fed.blocks_["expression"].feature_names_  # the planted genes pass
    _assert_same(fed, ref, table)


def test_stratified_screen_sums_site_scores():
    a, b = _table(60, 5, prefix="A"), _table(70, 6, prefix="B")
    fed = _fed([_site("A", a), _site("B", b)], top_k_var={}, screen={"expression": {"max_p": None, "top_k": 3}})
    block = fed.fit().blocks_["expression"]
    # reference: z of the summed per-site parts, each site's (imputed) values on one common scale
    from mmray.features.selection import cox_score_parts

    X = [block.imputer_.transform(block._encode(t.loc[t["has_expression"]], fitting=False)).to_numpy()
         for t in (a, b)]
    U = I = 0
    for x, t in zip(X, (a, b)):
        t = t.loc[t["has_expression"]]
        u, i = cox_score_parts(x, t["time_days"].to_numpy(float), t["event"].to_numpy(bool))
        U, I = U + u, I + i
    want = np.abs(U / np.sqrt(I))
    np.testing.assert_allclose(block.filter_.scores_, want, rtol=1e-7)
    assert set(block.filter_.support_indices_) == set(np.argsort(-want)[:3])


def test_order_statistics_and_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    cols = [np.round(rng.normal(5, 2, 41), 1), rng.exponential(300, 8), np.array([3.0, 3.0, 3.0, 7.0])]
    d = len(cols)
    parts = [{"n": np.array([len(c)], float), "mean": np.array([c.mean()]), "m2": np.array([((c - c.mean()) ** 2).sum()])}
             for c in cols]
    pooled = {k: np.concatenate([p[k] for p in parts]) for k in ("n", "mean", "m2")}

    def count_le(th, rows):
        return np.stack([np.searchsorted(np.sort(cols[r]), th[i], side="right") for i, r in enumerate(rows)])
    qs = [0.25, 0.5, 0.9, 1.0]
    got = pooled_quantiles(count_le, pooled, qs)
    for j in range(d):
        np.testing.assert_allclose(got[j], np.quantile(cols[j], qs), rtol=1e-12, atol=1e-9)
    ranks = np.array([1, 4, 2])
    lo, hi = np.array([-100.0, -1.0, 0.0]), np.array([100.0, 5000.0, 10.0])
    got = order_stats(lambda th: count_le(th, np.arange(d)), ranks, lo=lo, hi=hi)
    np.testing.assert_allclose(got, [np.sort(c)[r - 1] for c, r in zip(cols, ranks)], rtol=1e-12)


def test_time_bins_match_the_pooled_fit():
    a, b = _table(50, 7, prefix="A"), _table(45, 8, prefix="B")
    fed = _fed([_site("A", a), _site("B", b)])
    bins = fed.time_bins(4)
    pooled = pd.concat([a, b])
    ref = TimeBins.fit(pooled["time_days"], pooled["event"], 4)
    np.testing.assert_allclose(bins.cuts_days, ref.cuts_days, rtol=1e-12)
    assert bins.max_days == pytest.approx(ref.max_days)


def test_site_moments_of_a_constant_and_an_empty_column():
    m = site_moments(np.array([[1.0, np.nan], [1.0, np.nan]]))
    assert m["n"].tolist() == [2, 0] and m["m2"].tolist() == [0, 0]


def test_fedavg_weights_by_rows():
    s1 = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    s2 = {"w": torch.tensor([3.0, 6.0]), "steps": torch.tensor(9)}
    avg = fedavg([{"state": s1, "n_examples": 10}, {"state": s2, "n_examples": 30}])
    torch.testing.assert_close(avg["w"], torch.tensor([2.5, 5.0]))
    assert int(avg["steps"]) == 3


def test_pooled_c_is_the_c_of_within_site_pairs():
    rng = np.random.default_rng(2)
    evals, conc = {}, [0, 0, 0]
    for s in ("a", "b"):
        t, e, r = rng.exponential(100, 30), rng.random(30) < 0.6, rng.normal(size=30)
        c, cc, dd, tt, _ = concordance_index_censored(e, t, r)
        evals[s] = {"test": {"concordant": cc, "discordant": dd, "tied_risk": tt, "c": c}}
        conc = [conc[0] + cc, conc[1] + dd, conc[2] + tt]
    got, k = pooled_c(evals, "test")
    assert k == 2 and got == pytest.approx((conc[0] + 0.5 * conc[2]) / sum(conc))


def test_egress_check_refuses_rows_and_identifiers():
    check_outbound({"n": 3, "mean": np.zeros(4), "state": {"w": torch.zeros(2)}, "names": ["expression__G1"]},
                   forbidden={"TCGA-05-1000"})
    with pytest.raises(EgressError, match="DataFrame"):
        check_outbound({"rows": pd.DataFrame({"x": [1]})})
    with pytest.raises(EgressError, match="dtype object"):
        check_outbound(np.array(["TCGA-05-1000"], dtype=object))
    with pytest.raises(EgressError, match="identifier"):
        check_outbound({"columns": ["clinical__TCGA-05-1000-note"]}, forbidden={"TCGA-05-1000"})
    with pytest.raises(EgressError):
        check_outbound({"blob": b"raw"})


def test_correlation_filter_from_scores_matches_fit():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(80, 6)), rng.normal(size=80)
    fitted = CorrelationFilter("pearson", max_p=0.5, top_k=2).fit(X, y)
    again = CorrelationFilter("pearson", max_p=0.5, top_k=2).fit_scores(fitted.scores_, fitted.p_values_)
    np.testing.assert_array_equal(again.support_indices_, fitted.support_indices_)


def test_fedprox_pulls_local_weights_towards_the_global_ones():
    from mmray.train.epoch import TorchSpec

    site = _site("A", _table(80, 9, prefix="A"))
    fed = _fed([site], top_k_var={"expression": 10})
    pre, bins = fed.fit(), fed.time_bins(3)
    spec = TorchSpec(model="early_fusion", task="survival_discrete", modality_dims=pre.dims, n_out=bins.n_bins,
                     bins=bins.to_dict(), batch_size=16)
    torch.manual_seed(0)
    glob = spec.build().state_dict()

    def dist(mu):
        site._setups.clear()
        out = site.train_round(fold=0, rnd=0, key=f"mu{mu}", setup={"pre": pre, "spec": spec}, state=glob,
                               local_epochs=3, mu=mu)
        assert out["n_examples"] == 80 and np.isfinite(out["loss"])
        return sum(float(((out["state"][k] - glob[k]) ** 2).sum()) for k in glob if glob[k].is_floating_point())
    free, prox = dist(0.0), dist(5.0)
    assert 0 < prox < 0.8 * free
