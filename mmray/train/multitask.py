"""The loss of a multi-task model, exact under data-parallel training (plain PyTorch; no Ray).

A model with ``tasks = (primary, *auxiliary)`` (``mm_gnn`` with
``tasks: [survival_cox, response, toxicity]``) returns every head's output
from ``model(batch, heads=True)``.  :func:`multitask_loss` scores each:

* the primary task with :func:`mmray.train.dist.global_loss` (the Cox
  partial likelihood over the gathered global batch, or a global mean);
* ``response``: cross-entropy over the patients with a known response,
  ``toxicity``: binary cross-entropy over the known toxicity labels, each a
  global mean (the normaliser all-reduced, as ``global_loss`` does), so W
  workers follow the one-worker gradient;

and combines them with the model's
:class:`~mmray.models.multitask.UncertaintyWeighting` (Kendall et al.).  A
task without any known label in the global batch drops out of that step
(its loss and its ``log sigma^2`` term), a decision every worker takes alike.
"""

from __future__ import annotations

import torch

from mmray.models.multitask import response_loss, toxicity_loss
from mmray.train.dist import _all_sum, global_loss, world_size


def is_multitask(model) -> bool:
    return len(getattr(model, "tasks", ())) > 1


def multitask_loss(model, outputs: dict, batch, weight: torch.Tensor, *, ties: str = "efron", bins=None,
                   class_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backpropagate, its global value)`` of one step; ``model`` is the unwrapped model."""
    W = world_size()
    primary = model.task
    losses = {primary: global_loss(primary, outputs[primary], batch, weight, ties=ties, bins=bins,
                                   class_weights=class_weights)[0]}
    for task, fn, target in (("response", response_loss, batch.response), ("toxicity", toxicity_loss, batch.toxicity)):
        if task not in outputs or target is None:
            continue
        local_sum, local_n = fn(outputs[task], target.to(outputs[task].device), weight)
        total = _all_sum(local_n.detach())
        if float(total) > 0:
            losses[task] = local_sum * W / total
    loss = model.task_weights(losses)
    return loss, _all_sum(loss.detach()) / W
