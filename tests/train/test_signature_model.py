"""The per-signature penalised Cox model, cross-validated on given folds (no Ray, no MLflow)."""

from __future__ import annotations

import numpy as np
import pytest

from mmray.errors import DataError
from mmray.train.signatures import CoxModelConfig, cross_validate, survival_grid


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * 3 + 10  # unscaled, like log2 expression
    lp = 0.9 * (x[:, 0] - 10) / 3 - 0.7 * (x[:, 1] - 10) / 3
    t = rng.exponential(900 * np.exp(-lp)) + 1
    c = rng.uniform(200, 3000, size=n)
    return x, np.minimum(t, c), t <= c, np.arange(n) % 5


@pytest.mark.parametrize("kind", ["coxnet", "coxph_ridge"])
def test_cross_validation_finds_a_planted_signal(kind):
    x, t, e, fold = _data()
    fit = cross_validate(x, t, e, fold, cfg=CoxModelConfig(kind=kind), n_boot=100)
    m = fit.metrics
    assert m["harrell_c_mean"] > 0.65 and 0 < m["harrell_c_sd"] < 0.2
    assert {f"harrell_c_fold{k}" for k in range(5)} <= set(m) and np.isfinite(m["uno_c_mean"])
    assert m["harrell_c_oof_low"] < m["harrell_c_oof"] < m["harrell_c_oof_high"]
    assert (fit.n_patients, fit.n_events) == (120, int(e.sum()))
    risk = fit.estimator.predict(x[:3])
    assert risk.shape == (3,)
    surv = np.vstack([f(fit.times_days) for f in fit.estimator.predict_survival_function(x[:3])])
    assert surv.shape == (3, fit.times_days.size) and np.all((surv >= 0) & (surv <= 1))
    assert np.all(np.diff(surv, axis=1) <= 1e-12)


def test_noise_stays_near_chance_and_bad_input_is_refused():
    x, t, e, fold = _data(seed=1)
    noise = np.random.default_rng(2).normal(size=(120, 4))
    fit = cross_validate(noise, t, e, fold, cfg=CoxModelConfig(), n_boot=0)
    assert 0.3 < fit.metrics["harrell_c_mean"] < 0.65 and "harrell_c_oof_low" not in fit.metrics
    with pytest.raises(DataError, match="no genes"):
        cross_validate(x[:, :0], t, e, fold, cfg=CoxModelConfig())
    with pytest.raises(DataError):
        cross_validate(x, t[:-1], e, fold, cfg=CoxModelConfig())


def test_survival_grid_stays_inside_follow_up():
    np.testing.assert_array_equal(survival_grid((365, 730, 5000), train_time_days=np.array([10.0, 2000.0])),
                                  [365.0, 730.0])
