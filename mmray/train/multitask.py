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

Early stopping of a multi-task model follows :func:`multitask_validation_score`:
the mean over its tasks of each head's validation metric (selecting on the
primary head alone keeps an epoch where the other heads have barely learned).
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


@torch.inference_mode()
def multitask_validation_score(model, source, *, kw: dict, device) -> tuple[float, dict]:
    """``(score, parts)``: the mean over tasks of each head's validation metric (Harrell's C or macro AUC of the
    primary task, macro AUROC of response and of toxicity, where defined), so early stopping keeps the epoch
    that is best for the model's tasks together, not for the primary head alone."""
    import math

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from mmray.errors import DataError
    from mmray.train import data as D
    from mmray.train import metrics as M
    from mmray.train.loop_core import Predictions, validation_score

    model.eval()
    outs, labels = {}, {"time_days": [], "event": [], "subtype": [], "response": [], "toxicity": []}
    for batch, _ in D.batches(source, **kw):
        batch = batch.to(device)
        for t, v in model(batch, heads=True).items():
            outs.setdefault(t, []).append(v.float().cpu())
        for k, acc in labels.items():
            if getattr(batch, k) is not None:
                acc.append(getattr(batch, k).cpu())
    cat = {k: torch.cat(v).numpy() for k, v in outs.items()}
    lab = {k: (torch.cat(v).numpy() if v else None) for k, v in labels.items()}
    primary = model.task
    parts = {primary: validation_score(primary, Predictions(output=cat[primary], patient_ids=[], time_days=lab["time_days"],
                                                            event=lab["event"], subtype=lab["subtype"]))}
    if "response" in cat and lab["response"] is not None:
        y, known = lab["response"], lab["response"] >= 0
        z = cat["response"] - cat["response"].max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        try:
            parts["response"] = M.subtype_auc(y[known], p[known])
        except DataError:
            parts["response"] = math.nan
    if "toxicity" in cat and lab["toxicity"] is not None:
        y, aucs = lab["toxicity"], []
        for k in range(y.shape[1]):
            known = np.isfinite(y[:, k])
            if len(np.unique(y[known, k])) == 2:
                aucs.append(roc_auc_score(y[known, k], cat["toxicity"][known, k]))
        parts["toxicity"] = float(np.mean(aucs)) if aucs else math.nan
    defined = [v for v in parts.values() if math.isfinite(v)]
    return (float(np.mean(defined)) if defined else math.nan), parts
