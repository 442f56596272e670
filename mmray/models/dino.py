"""DINO self-distillation (Caron et al., ICCV 2021), generic over the backbone and the input's shape.

Nothing here assumes 2D images: a backbone is any ``nn.Module`` that maps a
batch of views ``[B, ...]`` to ``[B, embed_dim]`` (a ViT or CNN on tiles, a
ViT over a grid of tile embeddings, a 3D CNN on CT crops), and views of
different shapes are grouped by shape, not by width.

* :class:`DINOHead`: MLP (``n_layers`` Linear + GELU) to a ``bottleneck_dim``
  vector, L2-normalised, then a weight-normalised linear layer to ``out_dim``
  prototypes whose norm is frozen at 1 (``norm_last_layer``);
* :class:`MultiCropWrapper`: one backbone pass per group of same-shaped views,
  then the head over all of them;
* :class:`DINOLoss`: cross-entropy between the centred, sharpened teacher
  distribution of each global view and the student distribution of every
  *other* view; the centre is an EMA of the teacher outputs (all-reduced
  over data-parallel workers, so every worker keeps the same centre);
* helpers for the training step: :func:`param_groups` (no weight decay on
  biases and norms), :func:`clip_gradients` (per-tensor norm clipping, as
  DINO does), :func:`cancel_last_layer_grads` (last-layer freeze) and
  :func:`ema_update` (teacher = EMA of the student).

The reference implementations (facebookresearch/dino, mahmoodlab/HIPT) were
read for the algorithm and its defaults; the code is ours.  Plain PyTorch, no
Ray.  The schedules (cosine learning rate with warm-up, weight decay,
teacher momentum, teacher temperature) are in :mod:`mmray.train.pretrain.schedules`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DINOHead",
    "DINOLoss",
    "MultiCropWrapper",
    "cancel_last_layer_grads",
    "clip_gradients",
    "ema_update",
    "param_groups",
    "teacher_temperatures",
]


def _trunc_normal_(w: torch.Tensor, std: float = 0.02) -> None:
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2 * std, b=2 * std)


class DINOHead(nn.Module):
    """Projection head: ``[B, in_dim] -> [B, out_dim]`` prototype scores.

    ``n_layers`` Linear layers (GELU between, optional BatchNorm) end in a
    ``bottleneck_dim`` vector that is L2-normalised and scored against
    ``out_dim`` weight-normalised prototypes.  With ``norm_last_layer`` the
    prototypes' norm (``weight_g``) stays 1, which DINO found stabilising.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        n_layers = max(1, n_layers)
        if n_layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            d = in_dim
            for _ in range(n_layers - 1):
                layers.append(nn.Linear(d, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                d = hidden_dim
            layers.append(nn.Linear(d, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        g = self.last_layer.parametrizations.weight.original0  # the per-prototype norm
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """``backbone`` then ``head`` over a list of views; views of one shape share one backbone pass.

    ``forward(views)``: ``views`` a list of tensors ``[B, ...]`` (all with
    the same ``B``; e.g. 2 global crops then 8 smaller local ones) or one
    tensor -> ``[len(views) * B, out_dim]``, views in the order given.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(views, torch.Tensor):
            views = [views]
        outs, start = [], 0
        while start < len(views):  # consecutive runs of one shape: one backbone call each
            end = start + 1
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            outs.append(self.backbone(torch.cat(list(views[start:end]))))
            start = end
        feats = torch.cat(outs)
        return self.head(feats)


def teacher_temperatures(*, warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Teacher temperature per epoch: linear from ``warmup_temp`` to ``temp`` over ``warmup_epochs``, then flat."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs > 0 else np.zeros(0)
    return np.concatenate([warm, np.full(max(0, epochs - warmup_epochs), temp)])


class DINOLoss(nn.Module):
    """The DINO objective with output centring and teacher sharpening.

    ``forward(student_out [V_s * B, K], teacher_out [V_t * B, K], epoch)``:
    student views in :class:`MultiCropWrapper` order (the ``n_global``
    global views first), teacher outputs of the global views only.  The
    teacher distribution is ``softmax((t - center) / T_teacher(epoch))``,
    the student's ``log_softmax(s / student_temp)``; the loss averages the
    cross-entropy over every (teacher view, other student view) pair.  The
    centre then moves towards the batch mean of the teacher outputs
    (``center_momentum``), all-reduced over workers when a process group is up.
    """

    def __init__(self, out_dim: int, *, n_crops: int, n_global: int = 2, warmup_teacher_temp: float = 0.04,
                 teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0, epochs: int = 100,
                 student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if not 1 <= n_global <= n_crops:
            raise ValueError(f"n_global must be within [1, n_crops={n_crops}], got {n_global}")
        self.n_crops, self.n_global = n_crops, n_global
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.temps = teacher_temperatures(warmup_temp=warmup_teacher_temp, temp=teacher_temp,
                                          warmup_epochs=warmup_teacher_temp_epochs, epochs=epochs)

    def teacher_temp(self, epoch: int) -> float:
        return float(self.temps[min(epoch, len(self.temps) - 1)])

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int) -> torch.Tensor:
        student = (student_out.float() / self.student_temp).chunk(self.n_crops)
        teacher_out = teacher_out.float()
        q_all = F.softmax((teacher_out - self.center) / self.teacher_temp(epoch), dim=-1).detach()
        teacher = q_all.chunk(self.n_global)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:  # never the teacher's own view
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
        self.update_center(teacher_out)
        return total / max(terms, 1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_sum = teacher_out.detach().float().sum(dim=0, keepdim=True)
        n = torch.tensor([teacher_out.shape[0]], dtype=torch.float32, device=teacher_out.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(n)
        self.center.mul_(self.center_momentum).add_(batch_sum / n, alpha=1 - self.center_momentum)


def param_groups(model: nn.Module) -> list[dict]:
    """``[{"params": regularised}, {"params": biases and norms, "weight_decay": 0}]`` (frozen ones left out).

    The schedule sets the weight decay of the first group only.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> float:
    """Scale each parameter's gradient to L2 norm at most ``clip`` (DINO clips tensor by tensor, not the global
    norm as ``torch.nn.utils.clip_grad_norm_`` does); returns the largest norm before clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([g.detach().norm(2) for g in grads])
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    for g, c in zip(grads, coef):
        g.mul_(c.to(g.dtype))
    return float(norms.max())


def cancel_last_layer_grads(model: nn.Module, *, epoch: int, freeze_epochs: int) -> None:
    """Drop the gradients of the head's ``last_layer`` during the first ``freeze_epochs`` epochs (0-based ``epoch``)."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter (same architecture)."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)

