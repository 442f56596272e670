"""Building blocks shared by the torch models: MLPs, masks, modality dropout, task heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mmray.errors import DataError, UnknownNameError
from mmray.models.batch import BAG, Batch
from mmray.models.losses import TASKS


def check_task(task: str, n_out: int) -> None:
    if task not in TASKS:
        raise UnknownNameError("task", task, TASKS)
    if task == "survival_cox" and n_out != 1:
        raise DataError(f"task 'survival_cox' predicts one risk per patient: n_out must be 1, got {n_out}")
    if task != "survival_cox" and n_out < 2:
        raise DataError(f"task {task!r} needs n_out >= 2 (time bins or classes), got {n_out}")


def check_dims(modality_dims: Mapping[str, int]) -> dict[str, int]:
    if not modality_dims:
        raise DataError("modality_dims is empty: give at least one modality and its feature width")
    bad = {m: d for m, d in modality_dims.items() if not isinstance(d, int) or d < 1}
    if bad:
        raise DataError(f"modality widths must be positive ints, got {bad}")
    if BAG in modality_dims:
        raise DataError(f"{BAG!r} is the tile-bag modality: pass its width as bag_dim, not in modality_dims")
    return dict(modality_dims)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None, *, dropout: float) -> nn.Sequential:
    """``Linear -> LayerNorm -> ReLU -> Dropout`` per hidden size, then an optional linear output."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def keep(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``[B, d]`` where ``present`` ``[B]``, zeros elsewhere (``where``: NaN-safe)."""
    return torch.where(present.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def modality_dropout(mask: torch.Tensor, p: float, *, training: bool) -> torch.Tensor:
    """Drop each present modality with probability ``p``, never all of a patient's.

    ``mask`` ``[B, M]`` bool.  A patient whose draws would drop everything
    keeps one of its present modalities, chosen at random.
    """
    if not training or p <= 0:
        return mask
    drop = (torch.rand(mask.shape, device=mask.device) < p) & mask
    new = mask & ~drop
    emptied = (new.sum(1) == 0) & (mask.sum(1) > 0)
    if emptied.any():
        score = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
        rescue = torch.zeros_like(mask).scatter_(1, score.argmax(1, keepdim=True), True)
        new = torch.where(emptied.unsqueeze(1), rescue & mask, new)
    return new


class TaskModel(nn.Module):
    """Base class: remembers task, modalities and output size; shapes the output.

    ``forward(batch)`` returns ``[B]`` risk for ``survival_cox``, ``[B, n_bins]``
    hazard logits for ``survival_discrete``, ``[B, n_classes]`` logits for
    ``subtype``.
    """

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None):
        super().__init__()
        check_task(task, n_out)
        self.task = task
        self.n_out = n_out
        self.modality_dims = check_dims(modality_dims)
        self.bag_dim = bag_dim
        self.modalities: tuple[str, ...] = tuple(self.modality_dims) + ((BAG,) if bag_dim else ())

    def shape_output(self, out: torch.Tensor) -> torch.Tensor:
        return out.squeeze(-1) if self.task == "survival_cox" else out

    def mask_of(self, batch: Batch) -> torch.Tensor:
        """``[B, M]`` mask in ``self.modalities`` order, from the batch's columns."""
        return torch.stack([batch.present(m) for m in self.modalities], dim=1)
