"""Losses against hand-computed values, lifelines / scikit-survival, and autograd checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from sksurv.linear_model.coxph import CoxPHOptimizer

from mmray.errors import DataError, UnknownNameError
from mmray.models.losses import (
    TimeBins,
    balanced_class_weights,
    build_loss,
    cox_ph_loss,
    discrete_risk,
    discrete_survival,
    discrete_time_nll,
    subtype_ce,
)

T = torch.tensor


def test_cox_breslow_and_efron_by_hand_with_ties():
    # times 1, 2, 2, 3; events at 1, both 2s; 3 censored.  w = exp(eta).
    eta = T([0.5, -0.2, 0.3, 1.0], dtype=torch.float64)
    time = T([1.0, 2.0, 2.0, 3.0], dtype=torch.float64)
    event = T([1, 1, 1, 0])
    w = torch.exp(eta).tolist()
    r1 = sum(w)  # risk set at t=1: everyone
    r2 = w[1] + w[2] + w[3]  # at t=2
    e2 = w[1] + w[2]  # the two tied events
    ll_breslow = (0.5 - math.log(r1)) + (-0.2 + 0.3 - 2 * math.log(r2))
    ll_efron = (0.5 - math.log(r1)) + (-0.2 + 0.3 - math.log(r2) - math.log(r2 - 0.5 * e2))
    breslow = cox_ph_loss(eta, time_days=time, event=event, ties="breslow")
    efron = cox_ph_loss(eta, time_days=time, event=event, ties="efron")
    assert breslow.item() == pytest.approx(-ll_breslow / 3, rel=1e-12)
    assert efron.item() == pytest.approx(-ll_efron / 3, rel=1e-12)


def test_cox_without_ties_breslow_equals_efron_and_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    eta = torch.randn(20, generator=g, dtype=torch.float64)
    time = torch.randperm(20, generator=g).double() + 1
    event = torch.rand(20, generator=g) < 0.6
    b = cox_ph_loss(eta, time_days=time, event=event, ties="breslow")
    assert b.item() == pytest.approx(cox_ph_loss(eta, time_days=time, event=event, ties="efron").item(), rel=1e-12)
    p = torch.randperm(20, generator=g)
    shuffled = cox_ph_loss(eta[p], time_days=time[p], event=event[p], ties="breslow")
    assert shuffled.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.fixture(scope="module")
def tied_data():
    rng = np.random.default_rng(3)
    n = 80
    X = rng.normal(size=(n, 2))
    time = rng.integers(1, 12, size=n).astype(float)  # many ties
    event = rng.random(n) < 0.7
    return X, time, event


def test_efron_matches_lifelines_log_likelihood_and_is_stationary_at_its_fit(tied_data):
    X, time, event = tied_data
    df = pd.DataFrame(X, columns=["a", "b"]).assign(T=time, E=event)
    cph = CoxPHFitter().fit(df, "T", "E")
    beta = T(cph.params_.to_numpy(), dtype=torch.float64, requires_grad=True)
    loss = cox_ph_loss(T(X) @ beta, time_days=T(time), event=T(event), ties="efron")
    assert -loss.item() * event.sum() == pytest.approx(cph.log_likelihood_, rel=1e-9)
    (grad,) = torch.autograd.grad(loss, beta)
    assert grad.abs().max().item() < 1e-5


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_matches_sksurv_partial_likelihood(tied_data, ties):
    X, time, event = tied_data
    opt = CoxPHOptimizer(X, event, time, alpha=np.zeros(2), ties=ties)
    for beta in ([0.0, 0.0], [0.4, -0.3], [1.5, 2.0]):
        ours = cox_ph_loss(T(X) @ T(beta, dtype=torch.float64), time_days=T(time), event=T(event), ties=ties).item()
        # sksurv's objective is the negative log partial likelihood divided by n
        assert ours * event.sum() / len(time) == pytest.approx(opt.nlog_likelihood(np.array(beta)), rel=1e-9)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_gradcheck(ties):
    g = torch.Generator().manual_seed(1)
    eta = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    time = T([3, 1, 2, 2, 5, 5, 5, 4, 1, 6, 2, 7], dtype=torch.float64)
    event = T([1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1]).bool()
    assert torch.autograd.gradcheck(lambda e: cox_ph_loss(e, time_days=time, event=event, ties=ties), (eta,))


def test_cox_is_stable_for_large_scores():
    eta = T([800.0, -800.0, 400.0, 0.0], requires_grad=True)
    loss = cox_ph_loss(eta, time_days=T([1.0, 2.0, 2.0, 3.0]), event=T([1, 1, 1, 0]), ties="efron")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(eta.grad).all()


def test_cox_zero_events_gives_zero_with_a_gradient():
    eta = torch.randn(5, requires_grad=True)
    loss = cox_ph_loss(eta, time_days=torch.arange(1.0, 6.0), event=torch.zeros(5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(eta.grad, torch.zeros(5))


def test_cox_validates():
    with pytest.raises(DataError, match="squeeze"):
        cox_ph_loss(torch.zeros(3, 1), time_days=torch.ones(3), event=torch.ones(3))
    with pytest.raises(UnknownNameError, match="breslow, efron"):
        cox_ph_loss(torch.zeros(3), time_days=torch.ones(3), event=torch.ones(3), ties="exact")


def test_time_bins_from_event_time_quantiles():
    time = np.array([10, 20, 30, 40, 50, 60, 70, 80, 1000, 2000.0])
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    bins = TimeBins.fit(time, event, 4)
    # quartiles of the 8 event times only (the censored 1000, 2000 do not move them)
    assert bins.cuts_days == pytest.approx(tuple(np.quantile(time[:8], [0.25, 0.5, 0.75])))
    assert bins.n_bins == 4 and bins.max_days == 2000.0
    idx = bins.transform(np.array([1, 27.5, 27.6, 45, 62.5, 5000]))
    assert idx.tolist() == [0, 1, 1, 2, 3, 3]
    assert bins.transform(torch.tensor([1.0, 5000.0])).tolist() == [0, 3]
    assert TimeBins(**bins.to_dict()) == bins
    with pytest.raises(DataError, match="at least one event"):
        TimeBins.fit(time, np.zeros(10, bool), 4)


def test_discrete_nll_by_hand():
    logits = T([[0.0, 1.0, -1.0], [0.5, 0.2, 0.1]], dtype=torch.float64)
    h = torch.sigmoid(logits).tolist()
    # patient 0: event in bin 1 -> -log(1 - h00) - log(h01); patient 1: censored in bin 2 -> -log S_2
    unc = -math.log(1 - h[0][0]) - math.log(h[0][1])
    cen = -sum(math.log(1 - x) for x in h[1])
    for alpha in (0.0, 0.4):
        want = ((1 - alpha) * (unc + cen) + alpha * unc) / 2
        got = discrete_time_nll(logits, bin_index=T([1, 2]), event=T([True, False]), alpha=alpha)
        assert got.item() == pytest.approx(want, rel=1e-12)
    surv = discrete_survival(logits)
    assert surv[1, 2].item() == pytest.approx(math.exp(-cen), rel=1e-12)
    assert discrete_risk(logits).tolist() == pytest.approx((-surv.sum(1)).tolist())


def test_discrete_nll_gradcheck_and_extremes():
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y, e = T([0, 4, 2, 3]), T([True, False, True, False])
    assert torch.autograd.gradcheck(lambda z: discrete_time_nll(z, bin_index=y, event=e), (logits,))
    assert torch.isfinite(discrete_time_nll(torch.full((2, 3), 200.0), bin_index=T([2, 0]), event=T([True, False])))


def test_subtype_ce_with_class_weights():
    logits = T([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2], [0.0, 0.0, 3.0]])
    y = T([0, 1, 2])
    w = [1.0, 2.0, 0.5]
    logp = torch.log_softmax(logits, 1)
    want = -(w[0] * logp[0, 0] + w[1] * logp[1, 1] + w[2] * logp[2, 2]) / sum(w)
    assert subtype_ce(logits, y, class_weights=w).item() == pytest.approx(want.item(), rel=1e-6)
    assert balanced_class_weights([0, 0, 0, 1], 3).tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    with pytest.raises(DataError, match="3 entries"):
        subtype_ce(logits, y, class_weights=[1.0, 2.0])


def test_build_loss_reads_the_batch():
    from mmray.models.batch import make_batch
    b = make_batch({"x": np.zeros((3, 1))}, np.ones((3, 1), bool), modalities=["x"],
                   time_days=[5.0, 1.0, 9.0], event=[1, 0, 1], subtype=[0, 1, 1])
    risk = T([0.2, -0.1, 0.4])
    assert build_loss("survival_cox", ties="breslow")(risk, b).item() == pytest.approx(
        cox_ph_loss(risk, time_days=b.time_days, event=b.event, ties="breslow").item())
    bins = TimeBins.fit([5.0, 1.0, 9.0], [1, 1, 1], 2)
    logits = torch.zeros(3, bins.n_bins)
    assert build_loss("survival_discrete", bins=bins)(logits, b).item() == pytest.approx(
        discrete_time_nll(logits, bin_index=bins.transform(b.time_days), event=b.event).item())
    with pytest.raises(DataError, match="bins"):
        build_loss("survival_discrete")
    with pytest.raises(UnknownNameError, match="subtype"):
        build_loss("grading")
