"""DINO core: loss, centring, head, multi-crop wrapper, EMA, clipping, freezing, schedules (reference values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmray.models.dino import DINOHead, DINOLoss, MultiCropWrapper, cancel_last_layer_grads, clip_gradients, \
    ema_update, param_groups, teacher_temperatures
from mmray.models.dino_backbones import SmallCNN
from mmray.train.pretrain.schedules import Schedules, cosine_schedule


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reference_loss(student, teacher, center, *, n_crops, temp_t, temp_s):
    """The DINO loss written out with numpy loops over (teacher view, student view) pairs."""
    s = np.split(student / temp_s, n_crops)
    t = np.split(_softmax((teacher - center) / temp_t), 2)
    total, terms = 0.0, 0
    for iq, q in enumerate(t):
        for v, sv in enumerate(s):
            if v == iq:
                continue
            logp = sv - np.log(np.exp(sv - sv.max(1, keepdims=True)).sum(1, keepdims=True)) - sv.max(1, keepdims=True)
            total += np.mean(np.sum(-q * logp, axis=1))
            terms += 1
    return total / terms


def test_dino_loss_matches_the_written_out_objective_and_moves_the_centre():
    rng = np.random.default_rng(0)
    B, K, n_crops = 3, 7, 4
    student = rng.normal(size=(n_crops * B, K)).astype(np.float32)
    teacher = rng.normal(size=(2 * B, K)).astype(np.float32)
    loss_fn = DINOLoss(K, n_crops=n_crops, warmup_teacher_temp=0.04, teacher_temp=0.07,
                       warmup_teacher_temp_epochs=3, epochs=5, student_temp=0.1, center_momentum=0.9)
    center0 = rng.normal(size=(1, K)).astype(np.float32)
    loss_fn.center.copy_(torch.from_numpy(center0))
    got = loss_fn(torch.from_numpy(student), torch.from_numpy(teacher), epoch=1)
    want = _reference_loss(student, teacher, center0, n_crops=n_crops, temp_t=0.055, temp_s=0.1)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # centre: EMA of the teacher outputs' batch mean
    np.testing.assert_allclose(loss_fn.center.numpy(), 0.9 * center0 + 0.1 * teacher.mean(0, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    assert loss_fn.teacher_temp(0) == pytest.approx(0.04) and loss_fn.teacher_temp(4) == pytest.approx(0.07)
    assert loss_fn.teacher_temp(99) == pytest.approx(0.07)  # past the schedule: the last value


def test_teacher_temperature_warms_up_linearly_then_stays():
    np.testing.assert_allclose(teacher_temperatures(warmup_temp=0.04, temp=0.07, warmup_epochs=4, epochs=6),
                               [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    np.testing.assert_allclose(teacher_temperatures(warmup_temp=0.04, temp=0.04, warmup_epochs=0, epochs=3),
                               [0.04] * 3)


def test_dino_head_keeps_prototype_norm_at_one_and_l2_normalises_the_bottleneck():
    torch.manual_seed(0)
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, n_layers=3)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    w = head.last_layer.weight  # effective weight: rows of unit norm
    np.testing.assert_allclose(w.norm(dim=1).detach().numpy(), np.ones(32), rtol=1e-5)
    z = torch.nn.functional.normalize(head.mlp(torch.randn(4, 16)), dim=-1)
    assert torch.all(torch.abs(z.norm(dim=1) - 1) < 1e-5)
    # every score is a cosine: |score| <= 1
    assert float(head(torch.randn(50, 16)).detach().abs().max()) <= 1.0 + 1e-5
    assert DINOHead(16, 32, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.lin(x.flatten(2).mean(-1))


def test_multicrop_wrapper_runs_one_backbone_pass_per_shape_and_keeps_view_order():
    bb = _Counting()
    wrap = MultiCropWrapper(bb, nn.Identity())
    g = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    loc = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    out = wrap(g + loc)
    assert bb.calls == [(4, 3, 8, 8), (6, 3, 4, 4)]
    assert out.shape == (10, 4)
    np.testing.assert_allclose(out[4:6].detach().numpy(), bb.lin(loc[0].flatten(2).mean(-1)).detach().numpy(),
                               rtol=1e-6)
    vol = MultiCropWrapper(SmallCNN(in_chans=2, widths=(4, 8), spatial_dims=3), nn.Identity())  # 3D views too
    views = [torch.randn(2, 2, 16, 16, 16), torch.randn(2, 2, 16, 16, 16), torch.randn(2, 2, 8, 8, 8)]
    assert vol(views).shape == (6, 8)


def test_ema_update_is_the_convex_combination():
    torch.manual_seed(1)
    s, t = nn.Linear(4, 3), nn.Linear(4, 3)
    before = [p.detach().clone() for p in t.parameters()]
    ema_update(t, s, 0.9)
    for b, p, q in zip(before, t.parameters(), s.parameters()):
        torch.testing.assert_close(p.detach(), 0.9 * b + 0.1 * q.detach())
    ema_update(t, s, 1.0)  # momentum 1: teacher frozen
    torch.testing.assert_close(next(t.parameters()).detach(), 0.9 * before[0] + 0.1 * next(s.parameters()).detach())


def test_clip_gradients_clips_each_tensor_separately():
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    grads = [torch.full_like(p, v) for p, v in zip(m.parameters(), (10.0, 0.01, 5.0, 0.02))]
    for p, gr in zip(m.parameters(), grads):
        p.grad = gr.clone()
    top = clip_gradients(m, 3.0)
    assert top == pytest.approx(30.0, rel=1e-6)  # the 3x3 weight of 10s: norm 30
    norms = [float(p.grad.norm()) for p in m.parameters()]
    assert norms[0] == pytest.approx(3.0, rel=1e-5) and norms[2] == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(list(m.parameters())[1].grad, grads[1])  # small ones untouched
    torch.testing.assert_close(list(m.parameters())[3].grad, grads[3])


def test_last_layer_freeze_drops_only_its_gradients_in_the_first_epochs():
    w = MultiCropWrapper(nn.Linear(4, 6), DINOHead(6, 10, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False))
    w(torch.randn(3, 4)).sum().backward()
    cancel_last_layer_grads(w, epoch=0, freeze_epochs=1)
    names = {n: p.grad is None for n, p in w.named_parameters()}
    assert all(v for n, v in names.items() if "last_layer" in n)
    assert not any(v for n, v in names.items() if "last_layer" not in n)
    w(torch.randn(3, 4)).sum().backward()
    cancel_last_layer_grads(w, epoch=1, freeze_epochs=1)  # after the freeze: kept
    assert all(p.grad is not None for p in w.parameters())


def test_param_groups_leave_biases_and_norms_without_weight_decay():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(m)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_cosine_schedule_matches_dino_formula_with_warmup():
    s = cosine_schedule(1.0, 0.1, epochs=4, iters_per_epoch=5, warmup_epochs=1, start_warmup=0.0)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], np.linspace(0, 1, 5))
    i = np.arange(15)
    np.testing.assert_allclose(s[5:], 0.1 + 0.45 * (1 + np.cos(np.pi * i / 15)))
    mom = cosine_schedule(0.996, 1.0, epochs=2, iters_per_epoch=10)
    assert mom[0] == pytest.approx(0.996) and np.all(np.diff(mom) >= 0) and mom[-1] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="warmup_epochs"):
        cosine_schedule(1, 0, epochs=2, iters_per_epoch=3, warmup_epochs=3)


def test_schedules_scale_lr_with_the_total_batch():
    from mmray.train.pretrain.dino_config import DinoConfig

    cfg = DinoConfig(epochs=3, warmup_epochs=1, lr=0.0005, min_lr=1e-6)
    sch = Schedules.build(cfg, epochs=3, iters_per_epoch=4, total_batch=512)
    assert sch.lr.max() == pytest.approx(0.001)  # 0.0005 * 512 / 256 at the end of the warm-up
    assert sch.lr[3] == pytest.approx(0.001) and sch.lr[-1] > 1e-6
    assert sch.weight_decay[0] == pytest.approx(0.04) and sch.weight_decay[-1] < 0.4
    assert math.isclose(sch.teacher_temp[0], 0.04)
