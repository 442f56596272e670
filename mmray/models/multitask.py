"""Multi-task heads and their loss weighting, and the contrastive objective (plain PyTorch).

* :data:`AUX_TASKS`: tasks a multi-task model can add to its primary survival
  task: ``response`` (categorical, softmax cross-entropy over the patients
  with a known response) and ``toxicity`` (multi-label, binary cross-entropy
  over the known labels).
* :class:`UncertaintyWeighting`: homoscedastic-uncertainty weighting of
  Kendall, Gal & Cipolla (CVPR 2018): ``sum_t exp(-s_t) * L_t + s_t`` with a
  learnable ``s_t = log sigma_t^2`` per task.  At the optimum
  ``exp(-s_t) = 1 / L_t``, so every task keeps an equal share of the
  objective whatever its scale; a softmax over learnable weights would
  instead move all weight onto the task with the smallest loss (the test
  suite shows both).  ``s_t`` is clamped to ``[-S_MAX, S_MAX]`` so no weight
  can reach 0 or explode on a degenerate batch.  The first training batch
  that has every task sets ``s_t = log L_t`` (that batch's optimum): small
  cohorts give only tens of optimiser steps, too few for ``s_t`` to travel
  from 0 to a task's loss scale by gradient alone.
* :func:`info_nce`: the symmetric InfoNCE (NT-Xent) loss between two views of
  each patient, temperature 0.1 by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmray.errors import DataError

AUX_TASKS = ("response", "toxicity")
PRIMARY_TASKS = ("survival_cox", "survival_discrete", "subtype")
S_MAX = 6.0
WEIGHTINGS = ("uncertainty", "equal")


def check_tasks(tasks: Sequence[str], primary: str) -> tuple[str, ...]:
    """``tasks`` with the primary task first; unknown names are an error listing the valid ones."""
    tasks = tuple(tasks) or (primary,)
    if tasks[0] != primary:
        raise DataError(f"tasks {list(tasks)}: the first task must be the model's primary task {primary!r}")
    bad = [t for t in tasks[1:] if t not in AUX_TASKS]
    if bad:
        raise DataError(f"tasks {bad} cannot be added to {primary!r}; auxiliary tasks: {list(AUX_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"tasks {list(tasks)} list a task twice")
    return tasks


class UncertaintyWeighting(nn.Module):
    """``sum_t exp(-s_t) L_t + s_t`` over the tasks present in a batch (module doc)."""

    def __init__(self, tasks: Sequence[str], *, kind: str = "uncertainty"):
        super().__init__()
        if kind not in WEIGHTINGS:
            raise DataError(f"task weighting {kind!r}; valid: {list(WEIGHTINGS)}")
        self.tasks, self.kind = tuple(tasks), kind
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=kind == "uncertainty")
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def weights(self) -> dict[str, float]:
        """Current weight ``exp(-s_t)`` of each task."""
        s = self.log_vars.detach().clamp(-S_MAX, S_MAX)
        return {t: float(torch.exp(-v)) for t, v in zip(self.tasks, s)}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "uncertainty" and self.training and not bool(self.started) and set(losses) >= set(self.tasks):
            with torch.no_grad():  # warm start at this batch's optimum, exp(-s_t) = 1 / L_t
                self.log_vars.copy_(torch.stack([losses[t].detach().clamp(min=1e-6).log() for t in self.tasks])
                                    .clamp(-S_MAX, S_MAX))
                self.started.fill_(True)
        total = None
        for i, t in enumerate(self.tasks):
            if t not in losses:
                continue  # no label of this task in the batch: neither its loss nor its s_t term
            s = self.log_vars[i].clamp(-S_MAX, S_MAX)
            term = torch.exp(-s) * losses[t] + s if self.kind == "uncertainty" else losses[t]
            total = term if total is None else total + term
        if total is None:
            raise DataError("no task of the batch has a label")
        return total


def response_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of weighted CE over known labels, their weight)``: ``target`` -1 is unknown."""
    known = (target >= 0) & (weight > 0)
    if not bool(known.any()):
        return logits.sum() * 0.0, torch.zeros((), device=logits.device)
    per = F.cross_entropy(logits[known], target[known].long(), reduction="none")
    return (per * weight[known]).sum(), weight[known].sum()


def toxicity_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of weighted BCE over known labels, their count)``: NaN targets are unknown."""
    known = torch.isfinite(target) & (weight > 0).unsqueeze(1)
    if not bool(known.any()):
        return logits.sum() * 0.0, torch.zeros((), device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits[known], target[known], reduction="none")
    w = weight.unsqueeze(1).expand_as(target)[known]
    return (per * w).sum(), w.sum()


def info_nce(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between views ``z1``, ``z2`` ``[B, d]``: patient ``i``'s two views are the positive
    pair, the other ``B - 1`` patients of the other view the negatives."""
    if z1.shape != z2.shape or z1.shape[0] < 2:
        raise DataError(f"InfoNCE needs two views of >= 2 patients, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
