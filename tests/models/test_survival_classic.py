"""Classical survival families: each beats chance on a planted signal, curves are survival functions, C is exact."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from mmray.errors import DataError
from mmray.models.registry import MODELS, build_model, describe
from mmray.models.survival_classic import CLASSIC_FAMILIES, Coxnet
from mmray.train.metrics import harrell_c

FAST = {"rsf": {"n_estimators": 40}, "gbsa": {"n_estimators": 60}}


def planted(n: int, *, seed: int, d: int = 8, effect: float = 1.0):
    """Exponential times with log-hazard ``effect * (x0 - x1)``, ~30% censored; other columns are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    lp = effect * (x[:, 0] - x[:, 1])
    t_event = rng.exponential(365.0 * np.exp(-lp))
    t_cens = rng.exponential(365.0 * 2.5, size=n)
    return x, np.maximum(np.minimum(t_event, t_cens), 1.0), t_event <= t_cens, lp


def pairwise_c(risk, time, event) -> float:
    """Harrell's C by counting every comparable pair (independent of scikit-survival)."""
    num = den = 0.0
    for i in range(len(time)):
        if not event[i]:
            continue
        later = time > time[i]
        den += later.sum()
        num += (risk[i] > risk[later]).sum() + 0.5 * (risk[i] == risk[later]).sum()
    return num / den


@pytest.mark.parametrize("family", sorted(CLASSIC_FAMILIES))
def test_family_beats_chance_on_held_out_rows_and_gives_survival_curves(family):
    x, t, e, lp = planted(260, seed=3)
    model = build_model(family, task="survival_cox", modality_dims={}, n_out=1, **FAST.get(family, {}))
    model.fit(x[:160], time_days=t[:160], event=e[:160])
    risk = model.predict(x[160:])
    c = harrell_c(risk, time_days=t[160:], event=e[160:])
    assert c > 0.68, (family, c)
    assert c == pytest.approx(pairwise_c(risk, t[160:], e[160:]), abs=1e-12)
    times = np.array([100.0, 300.0, 600.0])
    s = model.survival(x[160:], times)
    assert s.shape == (100, 3) and np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s, axis=1) <= 1e-12)
    # the patients the model ranks riskiest have the lower predicted survival at one year
    hi, lo = risk > np.quantile(risk, 0.75), risk < np.quantile(risk, 0.25)
    assert s[hi, 1].mean() < s[lo, 1].mean()


def test_coxnet_picks_alpha_by_inner_cv_on_its_rows_and_keeps_the_signal():
    x, t, e, _ = planted(200, seed=5, d=30)
    m = Coxnet(inner_folds=3, seed=1).fit(x, time_days=t, event=e)
    path = m.model_.alphas_
    assert m.alpha_ in path and m.cv_scores_.shape == path.shape
    assert m.alpha_ == path[int(np.argmax(m.cv_scores_))]
    coef = m.coef_
    assert abs(coef[0]) > 0 and abs(coef[1]) > 0 and coef[0] > 0 > coef[1]  # the planted pair, right signs
    assert np.count_nonzero(coef[2:]) < 28  # the lasso part dropped noise columns
    again = Coxnet(inner_folds=3, seed=1).fit(x, time_days=t, event=e)
    assert again.alpha_ == m.alpha_  # seeded


def test_bad_inputs_are_clear_errors():
    x, t, e, _ = planted(40, seed=0)
    with pytest.raises(DataError, match="no events"):
        Coxnet().fit(x, time_days=t, event=np.zeros(40, bool))
    m = build_model("coxph_ridge", task="survival_cox", modality_dims={}, n_out=1).fit(x, time_days=t, event=e)
    with pytest.raises(DataError, match="expected 8 feature columns"):
        m.predict(x[:, :3])
    x[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        m.predict(x)
    with pytest.raises(DataError, match="supports tasks"):
        build_model("rsf", task="subtype", modality_dims={}, n_out=3)


def test_registry_lists_the_families_and_ensemble_with_search_ranges():
    d = describe()
    for name in (*CLASSIC_FAMILIES, "ensemble"):
        assert d[name]["framework"] == "sksurv" and d[name]["tasks"] == ["survival_cox"]
        assert any(h["kind"] != "fixed" for h in d[name]["hparams"].values())  # something to tune
    from mmray.train.ensemble import StackedEnsemble

    real = inspect.signature(StackedEnsemble.__init__).parameters
    declared = inspect.signature(MODELS["ensemble"].builder.__init__).parameters
    assert all(real[k].default == p.default for k, p in declared.items() if k != "self")
    ens = build_model("ensemble", task="survival_cox", modality_dims={}, n_out=1, members=["rsf"], method="rank")
    assert isinstance(ens, StackedEnsemble) and ens.method == "rank" and ens.members == ["rsf"]
