"""A Ray Tune trial: one hyperparameter config trained on every saved fold, scored on the fold mean.

Torch models: the k fold models train in lockstep, one epoch each per
report.  Each fold early-stops on its inner validation split (never its test
fold); its *current* model is its best-validation weights so far, and the
trial reports ``cv_score``, the mean over folds of the current models'
held-out (test-fold) C-index (AUC for subtype), after every epoch, so ASHA
compares trials at equal budgets and Optuna sees the fold mean.  A fold's
test score is recomputed only when its validation score improves.

HEEC (LightGBM) and the classical survival families / ``ensemble``
(scikit-survival): one fold per report; ``cv_score`` is the running mean over
the folds done so far (ASHA's budget unit is then a fold).

With repeated CV (``folds.repeats``) every fold of every repeat is scored,
on the same saved folds ``mmray train`` uses.

Preprocessing is fitted per fold on the fit rows, exactly as
:mod:`mmray.train.fold_fit` does for ``mmray train``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmray.train.classic_runner import CLASSIC_MODELS
from mmray.train.epoch import EpochTrainer
from mmray.train.fold_fit import FoldSettings, fit_fold_heec, fold_rows, prepare_torch_fold
from mmray.train.loop_core import validation_score
from mmray.tune.space import split_params

METRIC = "cv_score"


@dataclass
class TrialData:
    """What every trial needs (shipped once through the object store by ``tune.with_parameters``)."""

    table: pd.DataFrame  # rows usable for the task, with fold assignments resolvable from ``folds``
    folds: pd.DataFrame
    model: str
    task: str
    modalities: tuple[str, ...]
    classes: list[str] | None
    settings: FoldSettings
    n_folds: int
    fixed: dict[str, Any]
    repeat_folds: list[pd.DataFrame] | None = None  # folds of each CV repeat; None: ``folds`` alone

    def splits(self) -> list[tuple[int, int, pd.DataFrame]]:
        """``(repeat, fold, that repeat's folds)`` of every held-out fold scored."""
        return [(r, k, f) for r, f in enumerate(self.repeat_folds or [self.folds]) for k in range(self.n_folds)]


def _report(metrics: dict) -> None:
    from ray import tune

    tune.report(metrics)


def run_trial(config: dict, data: TrialData, *, report=_report, workdir: str | None = None) -> dict:
    """Train ``config`` on every fold (module doc), calling ``report`` per step; returns the last metrics."""
    import torch

    torch.set_num_threads(1)
    hp, train = split_params(config, model=data.model, fixed=data.fixed)
    settings = dataclasses.replace(data.settings, **{k: v for k, v in train.items()
                                                     if k in ("lr", "weight_decay", "batch_size")})
    if data.model == "heec":
        return _trial_heec(hp, data, settings, report, workdir)
    if data.model in CLASSIC_MODELS:
        return _trial_classic(hp, data, settings, report)
    return _trial_torch(hp, data, settings, report)


def _trial_torch(hp: dict, data: TrialData, settings: FoldSettings, report) -> dict:
    folds = []
    for _, k, fold_table in data.splits():
        rows = fold_rows(data.table, fold_table, fold=k, val_fraction=settings.val_fraction, seed=settings.seed)
        tf = prepare_torch_fold(model=data.model, hparams=hp, task=data.task, modalities=data.modalities, rows=rows,
                                fold=k, classes=data.classes, settings=settings)
        folds.append({"tf": tf, "tr": EpochTrainer(tf.spec), "test": math.nan})
    last: dict = {}
    for epoch in range(settings.max_epochs):
        active = [f for f in folds if not f["tr"].stopped]
        if not active:
            break
        for f in active:
            tr, tf = f["tr"], f["tf"]
            tr.step(tf.source("fit"), tf.source("val"))
            if tr.stopper.best_epoch == tr.epoch:  # new best: its test score becomes the fold's current one
                f["test"] = validation_score(data.task, tr.predict(tf.source("test")))
        tests = [f["test"] for f in folds]
        last = {METRIC: float(np.nanmean(tests)) if np.isfinite(tests).any() else 0.5,
                "cv_score_sd": float(np.nanstd(tests, ddof=1)) if np.isfinite(tests).sum() > 1 else math.nan,
                "val_score": float(np.nanmean([f["tr"].stopper.best_score for f in folds])),
                "epoch": epoch, "folds_active": sum(not f["tr"].stopped for f in folds),
                **{f"fold{k}_score": float(f["test"]) for k, f in enumerate(folds)}}
        report(last)
    return last


def _trial_heec(hp: dict, data: TrialData, settings: FoldSettings, report, workdir: str | None) -> dict:
    scores: list[float] = []
    last: dict = {}
    settings = dataclasses.replace(settings, lgbm_executor="local")
    for k, (_, fold, fold_table) in enumerate(data.splits()):
        rows = fold_rows(data.table, fold_table, fold=fold, val_fraction=settings.val_fraction, seed=settings.seed)
        out = fit_fold_heec(hparams=hp, task=data.task, modalities=data.modalities, rows=rows, fold=k,
                            classes=data.classes, settings=settings, run_dir=Path(workdir or ".") / f"fold{k}")
        scores.append(out.metrics["auc" if data.task == "subtype" else "harrell_c"])
        last = {METRIC: float(np.nanmean(scores)), "folds_done": k + 1,
                "cv_score_sd": float(np.nanstd(scores, ddof=1)) if len(scores) > 1 else math.nan,
                **{f"fold{i}_score": float(v) for i, v in enumerate(scores)}}
        report(last)
    return last


def _trial_classic(hp: dict, data: TrialData, settings: FoldSettings, report) -> dict:
    from mmray.train.classic_runner import ClassicJob, fit_one

    scores: list[float] = []
    last: dict = {}
    for r, k, fold_table in data.splits():
        job = ClassicJob(data.task, data.model, "tuned", data.modalities, hp, r, k)
        scores.append(fit_one(job, data.table, fold_table, settings).metrics["harrell_c"])
        last = {METRIC: float(np.nanmean(scores)), "folds_done": len(scores),
                "cv_score_sd": float(np.nanstd(scores, ddof=1)) if len(scores) > 1 else math.nan,
                **{f"fold{i}_score": float(v) for i, v in enumerate(scores)}}
        report(last)
    return last


def trainable(config: dict, data: TrialData) -> None:
    """Ray Tune function trainable (``tune.with_parameters(trainable, data=...)``)."""
    run_trial(config, data)
