"""The plain-PyTorch training core (no Ray): one epoch, prediction, early stopping, seeds.

The Ray Train loop wraps exactly these: inside ``train_loop_per_worker`` it
builds the model with :func:`mmray.models.registry.build_model`, the loss with
:func:`mmray.models.losses.build_loss`, a loader with :func:`make_loader`
(``ray.train.torch.prepare_data_loader`` may wrap it), then calls
:func:`train_epoch` / :func:`predict` / :func:`validation_score` per epoch
and reports.  :func:`fit` is the same loop for plain Python.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from mmray.errors import DataError
from mmray.models.batch import Batch, PatientDataset, collate
from mmray.models.losses import discrete_risk
from mmray.train import metrics


def seed_everything(seed: int, *, deterministic: bool = True) -> torch.Generator:
    """Seed Python, numpy and torch; optionally ask torch for deterministic kernels.

    Returns a ``torch.Generator`` seeded with ``seed`` for DataLoader shuffling.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def make_loader(dataset: PatientDataset, *, modalities, batch_size: int, shuffle: bool,
                seed: int = 0, bag_dim: int | None = None, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` yielding :class:`Batch` (bags concatenated, no padding), seeded shuffling."""
    g = torch.Generator()
    g.manual_seed(seed)
    fn = partial(collate, modalities=tuple(modalities), dims=dataset.dims, bag_dim=bag_dim)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=fn,
                                       generator=g, drop_last=drop_last)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_epoch(model: torch.nn.Module, loader, loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor],
                optimizer: torch.optim.Optimizer, *, grad_clip: float | None = 5.0) -> float:
    """One pass over ``loader``; returns the mean loss weighted by batch size."""
    model.train()
    device = _device_of(model)
    total, n = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch), batch)
        if not torch.isfinite(loss):
            raise DataError(f"training loss became {loss.item()}; lower the learning rate or check inputs for NaN")
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += float(loss.detach()) * batch.size
        n += batch.size
    return total / max(n, 1)


@dataclass
class Predictions:
    """Model outputs and labels of every patient a loader yielded, as numpy."""

    output: np.ndarray  # [n] risk | [n, K] hazard logits | [n, C] logits
    patient_ids: list[str]
    time_days: np.ndarray | None = None
    event: np.ndarray | None = None
    subtype: np.ndarray | None = None

    def risk(self, task: str) -> np.ndarray:
        """``[n]`` risk score (higher = worse) for survival tasks."""
        if task == "survival_cox":
            return self.output
        if task == "survival_discrete":
            return discrete_risk(torch.from_numpy(self.output)).numpy()
        raise DataError(f"risk is defined for survival tasks, not {task!r}")

    def proba(self) -> np.ndarray:
        """``[n, C]`` class probabilities (softmax of the logits)."""
        return torch.softmax(torch.from_numpy(self.output), dim=1).numpy()


@torch.inference_mode()
def predict(model: torch.nn.Module, loader) -> Predictions:
    """Outputs in eval mode over the whole loader, in loader order."""
    model.eval()
    device = _device_of(model)
    outs, ids, labels = [], [], {"time_days": [], "event": [], "subtype": []}
    for batch in loader:
        outs.append(model(batch.to(device)).float().cpu())
        ids.extend(batch.patient_ids)
        for k, acc in labels.items():
            v = getattr(batch, k)
            if v is not None:
                acc.append(v.cpu())
    cat = {k: (torch.cat(v).numpy() if v else None) for k, v in labels.items()}
    return Predictions(output=torch.cat(outs).numpy(), patient_ids=ids, **cat)


def validation_score(task: str, pred: Predictions) -> float:
    """Harrell's C (survival) or one-vs-rest macro AUC (subtype); NaN when undefined."""
    try:
        if task.startswith("survival"):
            return metrics.harrell_c(pred.risk(task), time_days=pred.time_days, event=pred.event)
        return metrics.subtype_auc(pred.subtype, pred.proba())
    except DataError:
        return float("nan")


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without improving the score by ``min_delta``; keeps the best weights."""

    patience: int = 10
    min_delta: float = 1e-4
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    bad_epochs: int = 0

    def step(self, score: float, model: torch.nn.Module, *, epoch: int) -> bool:
        """Record ``score`` (higher is better); True when training should stop."""
        if math.isfinite(score) and score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def fit(model: torch.nn.Module, train_loader, val_loader, *, task: str,
        loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor], optimizer: torch.optim.Optimizer,
        max_epochs: int = 60, patience: int = 10,
        on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train with early stopping on the validation score; the best weights are restored at the end.

    ``on_epoch(epoch, {"train_loss", "val_score"})`` is called after each
    epoch (the Ray half reports and checkpoints there).
    """
    stopper = EarlyStopping(patience=patience)
    history = []
    for epoch in range(max_epochs):
        loss = train_epoch(model, train_loader, loss_fn, optimizer)
        score = validation_score(task, predict(model, val_loader))
        row = {"epoch": epoch, "train_loss": loss, "val_score": score}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        if stopper.step(score, model, epoch=epoch):
            break
    stopper.restore(model)
    return FitResult(best_score=stopper.best_score, best_epoch=stopper.best_epoch, history=history)
