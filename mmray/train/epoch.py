"""One model's training state, advanced an epoch at a time (plain PyTorch; no Ray).

:class:`EpochTrainer` owns the model, the AdamW optimiser, the early
stopping on the validation score and the history, and knows how to train one
epoch over ``(Batch, weight)`` pairs with the distributed-exact losses of
:mod:`mmray.train.dist` and to score a validation source.  The Ray Train
worker loop (:mod:`mmray.train.ray_torch`) drives one per worker; a Tune
trial (:mod:`mmray.tune.trainable`) drives one per fold in lockstep.
:meth:`state` / :meth:`load` are the checkpoint contents.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mmray.errors import DataError
from mmray.models.losses import TimeBins
from mmray.models.registry import build_model
from mmray.train import data as D
from mmray.train.dist import _all_sum, global_loss, world_size
from mmray.train.loop_core import EarlyStopping, Predictions, predict, seed_everything, validation_score
from mmray.train.multitask import is_multitask, multitask_loss, multitask_validation_score


@dataclass
class TorchSpec:
    """Everything one fit needs (picklable; ``spec.json`` in each checkpoint)."""

    model: str
    task: str
    modality_dims: dict[str, int]
    n_out: int
    bag_dim: int | None = None
    hparams: dict = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 10
    seed: int = 0
    grad_clip: float | None = 5.0
    ties: str = "efron"
    bins: dict | None = None  # TimeBins.to_dict() for survival_discrete
    class_weights: list[float] | None = None
    fail_at_epoch: int | None = None  # failure drill: raise once at this epoch (a marker file makes it once)
    fail_marker: str | None = None

    def build(self) -> torch.nn.Module:
        return build_model(self.model, task=self.task, modality_dims=self.modality_dims, n_out=self.n_out,
                           bag_dim=self.bag_dim, **self.hparams)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str, sort_keys=True)


def rng_state() -> dict:
    """This process's random generators (CUDA's too once initialised: GPU dropout draws from it)."""
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


class EpochTrainer:
    """Model + optimiser + early stopping for one fit; ``prepare`` wraps the model (e.g. DDP)."""

    def __init__(self, spec: TorchSpec, *, device: torch.device | str = "cpu", prepare=None, rank: int = 0):
        seed_everything(spec.seed)
        self.spec = spec
        self.device = torch.device(device)
        self.model = spec.build().to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        self.stopper = EarlyStopping(patience=spec.patience)
        self.history: list[dict] = []
        self.epoch, self.attempt = -1, 0
        self.rank = rank
        self._prepare = prepare
        self.net = None
        self._rng_restored = False
        self.bins = TimeBins(**spec.bins) if spec.bins else None
        self.cw = (torch.as_tensor(spec.class_weights, dtype=torch.float32, device=self.device)
                   if spec.class_weights else None)
        self.kw = {"batch_size": spec.batch_size, "modalities": self.model.modalities, "dims": spec.modality_dims,
                   "bag_dim": spec.bag_dim}
        self.multitask = is_multitask(self.model)

    # ------------------------------------------------------------ state
    def load(self, state: dict) -> None:
        """Continue from a checkpoint's ``state`` (the next epoch is ``state['epoch'] + 1``)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for k in ("best_score", "best_epoch", "bad_epochs"):
            setattr(self.stopper, k, state["stopper"][k])
        self.stopper.best_state = state["best_model"]
        self.history, self.epoch, self.attempt = state["history"], state["epoch"], state["attempt"] + 1
        # Each rank continues its own random streams (dropout), so a resumed fit is the uninterrupted one.
        # A checkpoint with one state (older, or another world size) can't do that: fresh per-rank streams.
        per_rank = state.get("rng_by_rank") or []
        if len(per_rank) == world_size() and self.rank < len(per_rank):
            set_rng_state(per_rank[self.rank])
            self._rng_restored = True
        else:
            set_rng_state(state["rng"])

    def state(self, *, rng_by_rank: list[dict] | None = None) -> dict:
        """The checkpoint contents; ``rng_by_rank``: every rank's :func:`rng_state` (a collective gathers it)."""
        return {"model": self.model.state_dict(), "best_model": self.stopper.best_state or self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "epoch": self.epoch, "attempt": self.attempt,
                "stopper": {"best_score": self.stopper.best_score, "best_epoch": self.stopper.best_epoch,
                            "bad_epochs": self.stopper.bad_epochs},
                "history": self.history, "rng": rng_state(), "rng_by_rank": rng_by_rank}

    @property
    def stopped(self) -> bool:
        return self.stopper.bad_epochs >= self.spec.patience or self.epoch + 1 >= self.spec.max_epochs

    def _wrapped(self):
        if self.net is None:
            if not self._rng_restored:  # per-rank dropout streams
                torch.manual_seed(self.spec.seed * 7919 + self.rank + 1000 * self.attempt)
            self.net = self._prepare(self.model) if self._prepare else self.model
        return self.net

    # ------------------------------------------------------------ epochs
    def train_epoch(self, source) -> tuple[float, int]:
        """One pass over ``source`` (Ray shard or column dict); ``(global mean loss, local real rows)``."""
        net, s = self._wrapped(), self.spec
        epoch = self.epoch + 1
        net.train()
        loss_sum = torch.zeros((), device=self.device)  # sum over steps of (global loss x local real rows)
        n_local = 0
        for batch, w in D.batches(source, shuffle_seed=s.seed * 100003 + epoch, **self.kw):
            batch, w = batch.to(self.device), w.to(self.device)
            self.opt.zero_grad(set_to_none=True)
            if self.multitask:  # one head per task, weighted by homoscedastic uncertainty (mmray.train.multitask)
                loss, value = multitask_loss(self.model, net(batch, heads=True), batch, w, ties=s.ties,
                                             bins=self.bins, class_weights=self.cw)
            else:
                loss, value = global_loss(s.task, net(batch), batch, w, ties=s.ties, bins=self.bins,
                                          class_weights=self.cw)
            if not torch.isfinite(loss):
                raise DataError(f"training loss became {float(loss)} at epoch {epoch}; lower the learning rate")
            loss.backward()
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), s.grad_clip)
            self.opt.step()
            n_real = int((w > 0).sum())
            loss_sum += value * n_real
            n_local += n_real
        # every worker sees the same global loss per step: weighting it by the global step size, summed over
        # workers, gives the epoch's global row-weighted mean (one collective per epoch)
        totals = _all_sum(torch.stack([loss_sum, torch.tensor(float(n_local), device=self.device)]))
        return float(totals[0] / totals[1].clamp(min=1)), n_local

    def predict(self, source, *, best: bool = False) -> Predictions:
        """Outputs over ``source`` with the current (or the best) weights."""
        model = self.model
        if best and self.stopper.best_state is not None:
            model = self.spec.build().to(self.device)
            model.load_state_dict(self.stopper.best_state)
        return predict(model, (b.to(self.device) for b, _ in D.batches(source, **self.kw)))

    def step(self, train_source, val_source) -> dict:
        """Train one epoch, score validation, update early stopping; the epoch's history row."""
        t0 = time.perf_counter()
        pre = {}
        if self.epoch == -1 and getattr(self.model, "pretrain_epochs", 0) > 0:  # graph contrastive pretraining
            from mmray.train.contrastive import pretrain

            losses = pretrain(self.model, train_source, kw=self.kw, seed=self.spec.seed, device=self.device,
                              weight_decay=self.spec.weight_decay, grad_clip=self.spec.grad_clip)
            pre = {"pretrain_epochs": len(losses), "pretrain_loss_first": losses[0] if losses else None,
                   "pretrain_loss_last": losses[-1] if losses else None}
        loss, rows = self.train_epoch(train_source)
        train_s = time.perf_counter() - t0
        self.epoch += 1
        parts = {}
        if self.multitask:  # every head's validation metric, averaged (mmray.train.multitask)
            score, parts = multitask_validation_score(self.model, val_source, kw=self.kw, device=self.device)
        else:
            score = validation_score(self.spec.task, self.predict(val_source))
        self.stopper.step(score, self.model, epoch=self.epoch)
        row = {"epoch": self.epoch, "train_loss": loss, "val_score": score, "attempt": self.attempt, "rows": rows,
               "train_seconds": train_s, "seconds": time.perf_counter() - t0, **pre,
               **{f"val_{t}": v for t, v in parts.items()}}
        self.history.append(row)
        return row
