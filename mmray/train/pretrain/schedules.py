"""DINO's per-iteration schedules: learning rate, weight decay, teacher momentum (and per-epoch teacher temperature).

All are :func:`cosine_schedule` arrays with one value per training iteration
(``epochs * iters_per_epoch``), so a run resumed at epoch ``e`` continues at
iteration ``e * iters_per_epoch`` with exactly the values an uninterrupted run
would use.  Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmray.models.dino import teacher_temperatures


def cosine_schedule(base: float, final: float, *, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """``[epochs * iters_per_epoch]``: linear warm-up from ``start_warmup`` to ``base`` over ``warmup_epochs``,
    then a half cosine from ``base`` down (or up) to ``final``."""
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"need epochs >= 1 and iters_per_epoch >= 1, got {epochs} and {iters_per_epoch}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be within [0, epochs={epochs}], got {warmup_epochs}")
    warm_iters = warmup_epochs * iters_per_epoch
    warm = np.linspace(start_warmup, base, warm_iters) if warm_iters else np.zeros(0)
    n = epochs * iters_per_epoch - warm_iters
    steps = np.arange(n)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(n, 1)))
    return np.concatenate([warm, cos])


@dataclass(frozen=True)
class Schedules:
    """Every schedule of one DINO run (arrays indexed by global iteration, temperatures by epoch)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def build(cls, cfg, *, epochs: int, iters_per_epoch: int, total_batch: int) -> Schedules:
        """From a :class:`~mmray.train.pretrain.dino_config.DinoConfig` (``cfg``); the base learning rate
        follows the linear scaling rule ``lr * total_batch / 256``."""
        lr = cosine_schedule(cfg.lr * total_batch / 256.0, cfg.min_lr, epochs=epochs, iters_per_epoch=iters_per_epoch,
                             warmup_epochs=min(cfg.warmup_epochs, epochs))
        wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, epochs=epochs, iters_per_epoch=iters_per_epoch)
        mom = cosine_schedule(cfg.momentum_teacher, 1.0, epochs=epochs, iters_per_epoch=iters_per_epoch)
        temps = teacher_temperatures(warmup_temp=cfg.warmup_teacher_temp, temp=cfg.teacher_temp,
                                     warmup_epochs=min(cfg.warmup_teacher_temp_epochs, epochs), epochs=epochs)
        return cls(lr=lr, weight_decay=wd, momentum=mom, teacher_temp=temps)
