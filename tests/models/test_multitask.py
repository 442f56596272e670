"""Multi-task loss weighting (Kendall et al.) against a softmax over weights, and the InfoNCE loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.multitask import S_MAX, UncertaintyWeighting, check_tasks, info_nce, response_loss, toxicity_loss


def _two_task_problem(seed=0, n=256):
    """One shared trunk, two regression heads; task B's targets are 10x task A's, so its MSE is ~100x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    ya = x[:, :3].sum(1, keepdim=True) + 0.3 * torch.randn(n, 1, generator=g)
    yb = 10.0 * (x[:, 3:].sum(1, keepdim=True) + 0.3 * torch.randn(n, 1, generator=g))
    return x, ya, yb


def _train(weighting: str, *, steps=400):
    torch.manual_seed(0)
    x, ya, yb = _two_task_problem()
    trunk = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU())
    head_a, head_b = torch.nn.Linear(16, 1), torch.nn.Linear(16, 1)
    params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    if weighting == "uncertainty":
        w = UncertaintyWeighting(("a", "b"))
        params += list(w.parameters())
    else:  # the collapse-prone alternative: a softmax over learnable logits
        logits = torch.nn.Parameter(torch.zeros(2))
        params.append(logits)
    opt = torch.optim.Adam(params, lr=0.03)
    shares = wt = None
    for _ in range(steps):
        h = trunk(x)
        la = torch.mean((head_a(h) - ya) ** 2)
        lb = torch.mean((head_b(h) - yb) ** 2)
        if weighting == "uncertainty":
            loss = w({"a": la, "b": lb})
            wt = torch.exp(-w.log_vars.detach().clamp(-S_MAX, S_MAX))
        else:
            wt = torch.softmax(logits, 0)
            loss = wt[0] * la + wt[1] * lb
            wt = wt.detach()
        contrib = torch.stack([wt[0] * la.detach(), wt[1] * lb.detach()])
        shares = contrib / contrib.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return shares, la.item(), lb.item(), (w.weights() if weighting == "uncertainty" else {"a": float(wt[0]),
                                                                                             "b": float(wt[1])})


def test_uncertainty_weighting_keeps_both_tasks_when_losses_differ_100x():
    x, ya, yb = _two_task_problem()
    assert (yb.var() / ya.var()).item() > 50  # the scales really differ by ~100x
    shares, la, lb, weights = _train("uncertainty")
    # each task keeps a real share of the objective (no collapse) and both weights stay above a floor
    assert shares.min().item() > 0.25, shares
    assert min(weights.values()) > math.exp(-S_MAX) * 1.01
    assert weights["a"] > weights["b"]  # the noisier (larger-scale) task is down-weighted, not dropped
    # and both tasks were learned: each loss well below its target variance
    assert la < 0.5 * ya.var().item() and lb < 0.5 * yb.var().item()


def test_softmax_weighting_collapses_onto_the_easy_task():
    _, _, _, early = _train("softmax", steps=100)
    _, _, _, late = _train("softmax", steps=400)
    # a softmax over learnable weights moves the weight off the large-loss task, and keeps moving it:
    # why mmray does not use it
    assert late["b"] < 0.1 and late["b"] < early["b"] < 0.5


def test_uncertainty_weighting_skips_tasks_without_labels_and_matches_its_formula():
    w = UncertaintyWeighting(("survival_cox", "response", "toxicity"))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    la, lb = torch.tensor(2.0), torch.tensor(0.7)
    got = w({"survival_cox": la, "toxicity": lb})
    want = math.exp(-0.5) * 2.0 + 0.5 + math.exp(-2.0) * 0.7 + 2.0
    assert got.item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(DataError, match="no task"):
        w({})


def test_masked_task_losses_ignore_unknown_labels():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, -5.0, 0.0]])
    target = torch.tensor([0, 1, -1])
    s, n = response_loss(logits, target, torch.ones(3))
    ref = -np.log(np.exp(2) / (np.exp(2) + 2))  # both known rows are the same CE
    assert n.item() == 2 and s.item() == pytest.approx(2 * ref, rel=1e-5)
    tox = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    z = torch.tensor([[0.0, 100.0], [0.0, 0.0]])
    s, n = toxicity_loss(z, tox, torch.tensor([1.0, 0.0]))  # row 1 is padding (weight 0)
    assert n.item() == 1 and s.item() == pytest.approx(math.log(2), rel=1e-5)


def test_info_nce_matches_a_numpy_reference_and_rewards_aligned_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    a = z1.numpy() / np.linalg.norm(z1.numpy(), axis=1, keepdims=True)
    b = z2.numpy() / np.linalg.norm(z2.numpy(), axis=1, keepdims=True)
    s = a @ b.T / 0.1

    def ce(m):
        m = m - m.max(1, keepdims=True)
        return float(np.mean(-np.diag(m) + np.log(np.exp(m).sum(1))))
    assert info_nce(z1, z2).item() == pytest.approx(0.5 * (ce(s) + ce(s.T)), rel=1e-5)
    assert info_nce(z1, z1 + 0.01 * z2).item() < 0.05 < info_nce(z1, z2).item()
    with pytest.raises(DataError):
        info_nce(z1[:1], z2[:1])


def test_check_tasks():
    assert check_tasks([], "survival_cox") == ("survival_cox",)
    assert check_tasks(["survival_cox", "toxicity"], "survival_cox") == ("survival_cox", "toxicity")
    with pytest.raises(DataError, match="first task"):
        check_tasks(["response", "survival_cox"], "survival_cox")
    with pytest.raises(DataError, match="auxiliary"):
        check_tasks(["survival_cox", "grade"], "survival_cox")
