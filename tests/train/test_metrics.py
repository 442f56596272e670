"""Metrics agree with scikit-survival / lifelines / scikit-learn; validation and bootstrap behave."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from mmray.errors import DataError
from mmray.models.losses import TimeBins
from mmray.train import metrics as M


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(0)
    n = 300
    X = rng.normal(size=(n, 3))
    risk = X @ np.array([0.8, -0.5, 0.0])
    t_event = rng.exponential(size=n) * np.exp(-risk) * 500
    t_cens = rng.uniform(100, 1200, size=n)
    time = np.maximum(1.0, np.round(np.minimum(t_event, t_cens)))
    event = t_event <= t_cens
    return X, time, event, risk


def _split(c):
    X, time, event, risk = c
    return (X[:200], time[:200], event[:200]), (X[200:], time[200:], event[200:], risk[200:])


def test_harrell_c_matches_lifelines(cohort):
    _, time, event, risk = cohort
    # lifelines ranks predicted survival times: higher risk = shorter time
    want = concordance_index(time, -risk, event)
    assert M.harrell_c(risk, time_days=time, event=event) == pytest.approx(want, abs=1e-9)


def test_uno_c_matches_sksurv_with_training_censoring(cohort):
    (_, tt, te), (_, t, e, r) = _split(cohort)
    tau = 800.0
    want = concordance_index_ipcw(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), r, tau=tau)[0]
    assert M.uno_c(r, time_days=t, event=e, train_time_days=tt, train_event=te, tau_days=tau) == pytest.approx(want)
    assert 0.6 < M.uno_c(r, time_days=t, event=e, train_time_days=tt, train_event=te) < 0.9


def test_td_auc_and_ibs_match_sksurv(cohort):
    (Xtr, tt, te), (Xte, t, e, _) = _split(cohort)
    cox = CoxPHSurvivalAnalysis().fit(Xtr, Surv.from_arrays(te, tt))
    risk_tr, risk_te = cox.predict(Xtr), cox.predict(Xte)
    times = np.array([150.0, 300.0, 500.0])
    ytr, yte = Surv.from_arrays(te, tt), Surv.from_arrays(e, t)
    auc, mean = M.td_auc(risk_te, time_days=t, event=e, train_time_days=tt, train_event=te, times_days=times)
    want_auc, want_mean = cumulative_dynamic_auc(ytr, yte, risk_te, times)
    np.testing.assert_allclose(auc, want_auc)
    assert mean == pytest.approx(want_mean)
    # survival from our Breslow helper equals sksurv's CoxPH survival functions
    surv = M.BreslowSurvival().fit(risk_tr, time_days=tt, event=te).survival(risk_te, times)
    want_surv = np.stack([fn(times) for fn in cox.predict_survival_function(Xte)])
    np.testing.assert_allclose(surv, want_surv, rtol=1e-6)
    ibs = M.integrated_brier(surv, time_days=t, event=e, train_time_days=tt, train_event=te, times_days=times)
    assert ibs == pytest.approx(integrated_brier_score(ytr, yte, want_surv, times))
    assert 0 < ibs < 0.25


def test_discrete_survival_curves():
    bins = TimeBins(cuts_days=(100.0, 200.0), max_days=400.0)
    logits = np.log(np.array([[0.1, 0.2, 0.5]]) / (1 - np.array([[0.1, 0.2, 0.5]])))  # hazards 0.1, 0.2, 0.5
    s = M.discrete_survival_at(logits, bin_cuts_days=bins.cuts_days, max_time_days=bins.max_days,
                               times_days=[0.0, 50.0, 100.0, 200.0, 400.0, 900.0])
    np.testing.assert_allclose(s[0], [1.0, 0.95, 0.9, 0.72, 0.36, 0.36])


def test_eval_times_clipped_with_a_note(cohort):
    (_, tt, _), (_, t, _, _) = _split(cohort)
    et = M.eval_times([0.5, 300.0, 1e6], test_time_days=t, train_time_days=tt)
    assert et.times_days[0] == t.min() and et.times_days[-1] < min(t.max(), tt.max())
    assert et.times_days[1] == 300.0
    assert len(et.notes) == 1 and "clipped" in et.notes[0] and "1000000" in et.notes[0]
    assert M.eval_times([300.0], test_time_days=t, train_time_days=tt).notes == ()


def test_evaluate_survival_reports_everything_and_notes(cohort):
    (Xtr, tt, te), (_, t, e, r) = _split(cohort)
    breslow = M.BreslowSurvival().fit(Xtr[:, 0] * 0.8 - 0.5 * Xtr[:, 1], time_days=tt, event=te)
    rep = M.evaluate_survival(r, time_days=t, event=e, train_time_days=tt, train_event=te,
                              times_days=[100.0, 400.0, 99999.0], surv_fn=lambda ts: breslow.survival(r, ts))
    d = rep.as_dict()
    assert d["harrell_c"] > 0.6 and d["uno_c"] > 0.6 and d["mean_auc"] > 0.6 and 0 < d["ibs"] < 0.25
    assert "auc_100d" in d and any("clipped" in n for n in d["notes"])


@pytest.mark.parametrize("bad,match", [
    ({"time_days": [1.0, 0.0, 3.0]}, "> 0"),
    ({"time_days": [1.0, np.nan, 3.0]}, "NaN"),
    ({"event": [False, False, False]}, "censored"),
    ({"risk": [0.1, np.nan, 0.3]}, "NaN"),
    ({"event": [1, 2, 0]}, "0/1"),
    ({"risk": [0.1, 0.2]}, "n=3"),
])
def test_validation_errors_say_what_is_wrong(bad, match):
    args = {"time_days": [1.0, 2.0, 3.0], "event": [True, False, True], "risk": [0.1, 0.2, 0.3]} | bad
    with pytest.raises(DataError, match=match):
        M.harrell_c(args["risk"], time_days=args["time_days"], event=args["event"])


def test_subtype_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=120)
    logits = rng.normal(size=(120, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert M.subtype_auc(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert M.subtype_auc(y % 2, proba[:, :2] / proba[:, :2].sum(1, keepdims=True)) == pytest.approx(
        roc_auc_score(y % 2, proba[:, 1] / proba[:, :2].sum(1)))
    assert M.balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(DataError, match="2 classes"):
        M.subtype_auc([1, 1, 1], proba[:3])


def test_bootstrap_interval_contains_the_point_and_narrows_with_n(cohort):
    _, time, event, risk = cohort
    ci_small = M.bootstrap_ci(M.harrell_c, risk[:60], time_days=time[:60], event=event[:60], n_boot=200, seed=0)
    ci_large = M.bootstrap_ci(M.harrell_c, risk, time_days=time, event=event, n_boot=200, seed=0)
    for ci in (ci_small, ci_large):
        assert ci.low <= ci.point <= ci.high and ci.n_failed == 0
    assert (ci_large.high - ci_large.low) < (ci_small.high - ci_small.low)
    again = M.bootstrap_ci(M.harrell_c, risk, time_days=time, event=event, n_boot=200, seed=0)
    assert again == ci_large  # seeded
    assert ci_large.as_dict("c_index") == {"c_index": ci_large.point, "c_index_low": ci_large.low,
                                           "c_index_high": ci_large.high}


def test_bootstrap_with_a_training_set_and_failed_resamples(cohort):
    (_, tt, te), (_, t, e, r) = _split(cohort)
    uno = partial(M.uno_c, train_time_days=tt, train_event=te)  # the training set stays fixed
    ci = M.bootstrap_ci(uno, r, time_days=t, event=e, n_boot=50, seed=1)
    assert ci.low <= ci.point <= ci.high
    one_event = np.array([True] + [False] * 9)  # ~35% of resamples draw no event: skipped and counted
    ci = M.bootstrap_ci(M.harrell_c, -np.arange(10.0), time_days=np.arange(1.0, 11.0), event=one_event,
                        n_boot=100)
    assert 10 < ci.n_failed < 60 and ci.point == 1.0

    def needs_all_rows(x):
        if len(np.unique(x)) < len(x):
            raise DataError("a resample repeats a patient")
        return 0.5
    with pytest.raises(DataError, match="failed on 50 of 50"):
        M.bootstrap_ci(needs_all_rows, np.arange(30), n_boot=50)


def test_test_follow_up_beyond_training_is_handled_exactly(cohort):
    (_, tt, te), (_, t, e, r) = _split(cohort)
    t = t.copy()
    e = e.copy()
    t[:3], e[:3] = tt.max() + np.array([5.0, 50.0, 500.0]), [True, False, True]  # past the training range
    times = np.array([150.0, 300.0])
    ytr = Surv.from_arrays(te, tt)
    with pytest.raises(ValueError):
        cumulative_dynamic_auc(ytr, Surv.from_arrays(e, t), r, times)  # what sksurv alone does
    auc, _ = M.td_auc(r, time_days=t, event=e, train_time_days=tt, train_event=te, times_days=times)
    capped_t, capped_e = t.copy(), e.copy()
    capped_t[:3], capped_e[:3] = tt.max() - 1.0, False  # any follow-up past the eval times gives the same
    np.testing.assert_allclose(auc, cumulative_dynamic_auc(ytr, Surv.from_arrays(capped_e, capped_t), r, times)[0])
