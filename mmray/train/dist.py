"""Losses that give the same gradient on W data-parallel workers as on one worker with the whole batch.

DDP averages gradients over workers.  For a mean loss that is exact only
when every worker holds the same number of (real) rows, and for the Cox
partial likelihood it is not exact at all: each patient's risk set would be
the rows on its own worker.  :func:`global_loss` fixes both:

* ``survival_cox``: risks, times and events of every worker's batch are
  gathered with ``torch.distributed.nn.all_gather`` (differentiable), so each
  worker evaluates the Cox loss over the global batch and its risk sets.
  The gather's backward sums the ``W`` identical losses' gradients into each
  worker's own rows, DDP's average divides by ``W``: the result is the
  one-worker gradient of the global batch.
* mean losses (``survival_discrete``, ``subtype``): worker ``r`` returns
  ``sum_r(w * l) * W / sum_all(w)`` (the normaliser all-reduced), whose DDP
  average is the global weighted mean.

Rows with ``weight == 0`` are padding (to give every worker an equal shard)
and never count: in the Cox loss they get ``event=False`` and ``time 0`` (in
no risk set).  With one worker (or no process group) this is the plain loss.
Plain PyTorch; no Ray.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmray.models.batch import Batch
from mmray.models.losses import TimeBins, cox_ph_loss, discrete_time_nll


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sizes(n: int, device) -> list[int]:
    """Every worker's batch size (one small collective)."""
    t = torch.tensor([n], device=device)
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(s) for s in out]


def _gather_padded(x: torch.Tensor, *, differentiable: bool, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` ``[b_r, ...]`` from every worker along dim 0 (sizes may differ: padded for the collective)."""
    W = world_size()
    if W == 1:
        return x
    sizes = sizes or _sizes(x.shape[0], x.device)
    m = max(sizes)
    pad = torch.zeros((m - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    xp = torch.cat([x, pad])
    if differentiable:
        import torch.distributed.nn.functional as dnn

        parts = dnn.all_gather(xp)
    else:
        parts = [torch.zeros_like(xp) for _ in range(W)]
        dist.all_gather(parts, xp)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_gather_object(obj) -> list:
    """``obj`` of every worker, by rank (``[obj]`` without a process group)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_sum(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y


def global_loss(task: str, output: torch.Tensor, batch: Batch, weight: torch.Tensor, *, ties: str = "efron",
                bins: TimeBins | None = None, alpha: float = 0.4,
                class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backpropagate on this worker, global loss value for logging)``; see the module doc."""
    W = world_size()
    real = weight > 0
    if task == "survival_cox":
        time = torch.where(real, batch.time_days.to(output.dtype), torch.zeros((), dtype=output.dtype,
                                                                             device=output.device))
        event = batch.event.bool() & real
        sizes = _sizes(output.shape[0], output.device) if W > 1 else None
        risk = _gather_padded(output, differentiable=True, sizes=sizes)
        labels = _gather_padded(torch.stack([time, event.to(output.dtype)], 1), differentiable=False, sizes=sizes)
        loss = cox_ph_loss(risk, time_days=labels[:, 0], event=labels[:, 1].bool(), ties=ties)
        return loss, loss.detach()
    if task == "survival_discrete":
        if bins is None:
            raise ValueError("survival_discrete needs the training fold's TimeBins")
        norm = real.sum().to(output.dtype)
        local = discrete_time_nll(output[real], bin_index=bins.transform(batch.time_days[real]),
                                  event=batch.event[real], alpha=alpha) if bool(real.any()) else output.sum() * 0
        local_sum = local * norm
    elif task == "subtype":
        target = batch.subtype.long()
        w = real.to(output.dtype) if class_weights is None else class_weights.to(output)[target] * real
        per = F.cross_entropy(output, target, reduction="none")
        local_sum = (per * w).sum()
        norm = w.sum()
    else:
        raise ValueError(f"unknown task {task!r}")
    total = _all_sum(norm).clamp(min=1e-12)
    loss = local_sum * W / total
    return loss, _all_sum(local_sum.detach()) / total
