"""Graph contrastive pretraining of ``mm_gnn`` on a training fold (plain PyTorch; no Ray).

Before the supervised epochs, :func:`pretrain` trains the graph encoder and
fusion (not the heads) for ``model.pretrain_epochs`` epochs on the training
shard, labels unused: each patient graph is drawn twice with independent
augmentations (``model.edge_drop`` of its edges dropped, Gaussian noise of sd
``model.feature_noise`` on its present values), both views go through the
encoder and the projection head, and the symmetric InfoNCE loss at
temperature ``model.temperature`` (0.1) pulls the two views of a patient
together against the other patients of the batch
(:func:`mmray.models.multitask.info_nce`).  Padding rows (weight 0) are left
out.  Under data-parallel training each worker contrasts its own batch and
the gradients are averaged with an all-reduce, so every worker keeps the
same weights.
"""

from __future__ import annotations

import logging

import torch

from mmray.models.multitask import info_nce
from mmray.train import data as D
from mmray.train.dist import world_size

log = logging.getLogger(__name__)


def pretrain(model, source, *, kw: dict, seed: int, device, weight_decay: float = 1e-3,
             grad_clip: float | None = 5.0) -> list[float]:
    """Contrastive epochs over ``source`` (module doc); the mean loss of each epoch."""
    epochs = int(getattr(model, "pretrain_epochs", 0))
    if epochs <= 0:
        return []
    params = [p for n, p in model.named_parameters() if not n.startswith(("heads.", "task_weights."))]
    opt = torch.optim.AdamW(params, lr=float(getattr(model, "pretrain_lr", 1e-3)), weight_decay=weight_decay)
    W = world_size()
    losses = []
    model.train()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for batch, w in D.batches(source, shuffle_seed=seed * 7919 + 17 * epoch + 1, **kw):
            batch, real = batch.to(device), (w > 0).to(device)
            if int(real.sum()) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            z1 = model.project(model.embed(batch, augment=True))[real]
            z2 = model.project(model.embed(batch, augment=True))[real]
            loss = info_nce(z1, z2, temperature=float(model.temperature))
            loss.backward()
            if W > 1:
                import torch.distributed as dist

                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= W
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            total += float(loss.detach()) * int(real.sum())
            n += int(real.sum())
        losses.append(total / max(n, 1))
    log.debug("contrastive pretraining: %d epochs, InfoNCE %.3f -> %.3f", epochs, losses[0], losses[-1])
    return losses
