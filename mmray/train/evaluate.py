"""Score one fold's held-out predictions: survival (Harrell, Uno, td-AUC, IBS) or subtype (AUC, balanced accuracy).

Survival functions for the Brier score come from the training fold only: a
Breslow baseline fitted on the training patients' risks (Cox-type outputs:
torch ``survival_cox`` and HEEC) or the discrete-time hazards and the
training fold's time bins (``survival_discrete``).  A metric that cannot be
computed on a fold (e.g. no event before the censoring horizon) is NaN with
a note, never an exception that loses the other metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mmray.errors import DataError
from mmray.models.losses import TimeBins, discrete_risk
from mmray.train import metrics as M

SURVIVAL_METRICS = ("harrell_c", "uno_c", "td_auc", "ibs")
SUBTYPE_METRICS = ("auc", "balanced_accuracy")
HEADLINE = {"survival_cox": "harrell_c", "survival_discrete": "harrell_c", "subtype": "auc"}


def metric_names(task: str) -> tuple[str, ...]:
    return SUBTYPE_METRICS if task == "subtype" else SURVIVAL_METRICS


@dataclass
class FoldScore:
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)


def risk_of(task: str, output: np.ndarray) -> np.ndarray:
    """``[n]`` risk (higher = worse) from a model's survival output."""
    out = np.asarray(output, float)
    if task == "survival_cox":
        return out.reshape(-1)
    if task == "survival_discrete":
        import torch

        return discrete_risk(torch.from_numpy(out)).numpy()
    raise DataError(f"risk is defined for survival tasks, not {task!r}")


def score_survival(task: str, output: np.ndarray, *, time_days, event, train_output: np.ndarray | None,
                   train_time_days, train_event, bins: TimeBins | None = None, surv_fn=None) -> FoldScore:
    """Metrics of a survival fold; ``train_output`` (training rows' outputs) fits the Breslow baseline.

    ``surv_fn(times [T]) -> [n, T]``: the model's own survival curves (classical families), used as given.
    """
    risk = risk_of(task, output)
    notes: list[str] = []
    if surv_fn is not None:
        pass
    elif task == "survival_cox" and train_output is not None:
        try:
            bs = M.BreslowSurvival().fit(np.asarray(train_output, float).reshape(-1), time_days=train_time_days,
                                         event=train_event)
            surv_fn = lambda ts: bs.survival(risk, ts)
        except DataError as e:
            notes.append(f"Breslow baseline failed: {e}")
    elif task == "survival_discrete" and bins is not None:
        surv_fn = lambda ts: M.discrete_survival_at(output, bin_cuts_days=bins.cuts_days,
                                                    max_time_days=bins.max_days, times_days=ts)
    try:
        rep = M.evaluate_survival(risk, time_days=time_days, event=event, train_time_days=train_time_days,
                                  train_event=train_event, surv_fn=surv_fn)
    except DataError as e:
        return FoldScore({k: math.nan for k in SURVIVAL_METRICS}, notes + [str(e)])
    nan = math.nan
    m = {"harrell_c": rep.harrell_c, "uno_c": nan if rep.uno_c is None else rep.uno_c,
         "td_auc": nan if rep.mean_auc is None else rep.mean_auc, "ibs": nan if rep.ibs is None else rep.ibs}
    return FoldScore(m, notes + list(rep.notes))


def score_subtype(proba: np.ndarray, *, y_true) -> FoldScore:
    p = np.asarray(proba, float)
    y = np.asarray(y_true, int)
    notes = []
    try:
        auc = M.subtype_auc(y, p)
    except DataError as e:
        auc, notes = math.nan, [str(e)]
    return FoldScore({"auc": auc, "balanced_accuracy": M.balanced_accuracy(y, p.argmax(1))}, notes)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, float)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def headline_metric(task: str, *, output, time_days=None, event=None, subtype=None) -> float:
    """The fold metric bootstrapped for intervals: Harrell's C (survival) or macro AUC (subtype)."""
    if task == "subtype":
        return M.subtype_auc(np.asarray(subtype, int), np.asarray(output, float))
    return M.harrell_c(np.asarray(output, float), time_days=time_days, event=event)
