"""Kaplan-Meier risk groups: group sizes, log-rank test equal to lifelines', figure drawn."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.statistics import logrank_test

from mmray.errors import DataError
from mmray.report.km import km_figure, risk_groups


def cohort(n=200, seed=0, effect=1.0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t_event = rng.exponential(1000 * np.exp(-effect * risk))
    t_censor = rng.uniform(200, 3000, size=n)
    return risk, np.minimum(t_event, t_censor), t_event <= t_censor


def test_median_split_and_logrank_match_lifelines():
    risk, time, event = cohort()
    groups = risk_groups(risk, time_days=time, event=event)
    high = risk > np.median(risk)
    assert groups.n_per_group == (int((~high).sum()), int(high.sum()))
    assert groups.cutoffs == pytest.approx((float(np.median(risk)),))
    expected = logrank_test(time[~high], time[high], event[~high], event[high])
    assert groups.logrank_p == pytest.approx(expected.p_value, rel=1e-9)
    assert groups.logrank_p < 1e-4, "planted effect separates the groups"
    assert groups.events_per_group[1] > groups.events_per_group[0]


def test_no_signal_gives_large_p():
    risk, time, event = cohort(effect=0.0, seed=3)
    assert risk_groups(risk, time_days=time, event=event).logrank_p > 0.01


def test_figure_and_three_groups():
    risk, time, event = cohort(n=120)
    fig, groups = km_figure(risk, time_days=time, event=event, title="early_fusion", n_groups=3)
    assert groups.labels == ("Q1", "Q2", "Q3") and sum(groups.n_per_group) == 120
    ax = fig.axes[0]
    assert "log-rank p" in ax.get_title() and len(ax.get_legend().get_texts()) == 3


def test_bad_input_is_named():
    with pytest.raises(DataError, match="differ in length"):
        risk_groups([1.0, 2.0], time_days=[1.0], event=[1])
    with pytest.raises(DataError, match="need at least 4 patients"):
        risk_groups([1.0, np.nan, 2.0], time_days=[1.0, 2.0, 3.0], event=[1, 0, 1])
