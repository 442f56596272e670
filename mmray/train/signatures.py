"""One survival model on one gene signature, cross-validated on saved folds (no Ray, no MLflow).

The model is a penalised Cox model inside a scikit-learn ``Pipeline`` whose
imputation and standardisation are fitted inside each training fold:

* ``coxnet`` (default): ``CoxnetSurvivalAnalysis`` elastic net
  (``l1_ratio`` 0.5) along a path of ``n_alphas`` penalties from the data's
  own ``alpha_max`` (all coefficients zero) down to ``alpha_min_ratio *
  alpha_max`` (0.1); the model predicts at the end of the path, a penalty
  relative to the data's scale, so no tuning loop is needed;
  ``fit_baseline_model=True`` gives survival functions (Breslow).
* ``coxph_ridge``: ``CoxPHSurvivalAnalysis`` with a ridge penalty ``ridge_alpha``.

:func:`cross_validate` reports Harrell's and Uno's C per fold (with mean and
sd), Harrell's C of the pooled out-of-fold risks with a percentile bootstrap
interval, then refits on every patient for the registered model. Shapes:
``x`` [n, G] (patients x signature genes), ``time_days`` [n], ``event`` [n],
``fold`` [n] (fold id of each row).
"""

from __future__ import annotations

import time as _time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mmray.errors import DataError
from mmray.train import metrics as M


@dataclass(frozen=True)
class CoxModelConfig:
    kind: Literal["coxnet", "coxph_ridge"] = "coxnet"
    l1_ratio: float = 0.5
    n_alphas: int = 20
    alpha_min_ratio: float = 0.1
    max_iter: int = 100000
    ridge_alpha: float = 1.0
    # Times (days) at which the registered model reports survival probabilities;
    # times beyond the training follow-up are dropped.
    survival_times_days: tuple[float, ...] = (365.0, 730.0, 1095.0, 1825.0)

    def validate(self):
        if not 0.0 < self.l1_ratio <= 1.0:
            yield ("l1_ratio", f"must be in (0, 1], got {self.l1_ratio}")
        if not 0.0 < self.alpha_min_ratio < 1.0:
            yield ("alpha_min_ratio", f"must be in (0, 1), got {self.alpha_min_ratio}")
        if self.n_alphas < 1:
            yield ("n_alphas", f"must be >= 1, got {self.n_alphas}")
        if self.ridge_alpha < 0:
            yield ("ridge_alpha", f"must be >= 0, got {self.ridge_alpha}")
        if any(t <= 0 for t in self.survival_times_days):
            yield ("survival_times_days", "times must be > 0 days")


def build_estimator(cfg: CoxModelConfig):
    """Unfitted ``Pipeline(impute median -> standardise -> Cox)``."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis

    if cfg.kind == "coxnet":
        cox = CoxnetSurvivalAnalysis(l1_ratio=cfg.l1_ratio, n_alphas=cfg.n_alphas,
                                     alpha_min_ratio=cfg.alpha_min_ratio, max_iter=cfg.max_iter,
                                     fit_baseline_model=True)
    else:
        cox = CoxPHSurvivalAnalysis(alpha=cfg.ridge_alpha, ties="breslow")
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("cox", cox)])


def fit_estimator(cfg: CoxModelConfig, x: np.ndarray, time_days: np.ndarray, event: np.ndarray):
    from sksurv.util import Surv

    est = build_estimator(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds; results are checked below
        try:
            est.fit(x, Surv.from_arrays(event.astype(bool), time_days.astype(float)))
        except (ArithmeticError, ValueError, np.linalg.LinAlgError) as e:
            raise DataError(f"{cfg.kind} fit failed on {x.shape[0]} patients x {x.shape[1]} genes: {e}; "
                            f"try model.alpha_min_ratio higher or model.kind=coxph_ridge") from e
    return est


def survival_grid(times_days, *, train_time_days: np.ndarray) -> np.ndarray:
    """The configured times inside the training follow-up (survival functions end there)."""
    t = np.asarray(times_days, dtype=float)
    return t[(t > 0) & (t < float(np.max(train_time_days)))]


@dataclass
class SignatureFit:
    """Cross-validated metrics plus the model refitted on every patient."""

    metrics: dict[str, float]
    fold_metrics: list[dict[str, float]]
    estimator: object
    times_days: np.ndarray
    n_patients: int
    n_events: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def cross_validate(x, time_days, event, fold, *, cfg: CoxModelConfig, n_boot: int = 200,
                   seed: int = 0) -> SignatureFit:
    """Fit and score on every fold of ``fold``, then refit on all rows (see module docstring).

    ``fold`` ``[n]``, or ``[R, n]`` under repeated CV: every fold of every repeat is scored (fold
    metrics numbered ``r * K + k``); the out-of-fold C-index is that of repeat 0.
    """
    start = _time.perf_counter()
    x = np.asarray(x, dtype=float)
    t, e = M.check_survival(time_days, event)
    folds_2d = np.atleast_2d(np.asarray(fold))
    fold = folds_2d[0]
    if x.ndim != 2 or x.shape[0] != t.size or folds_2d.shape[1] != t.size:
        raise DataError(f"expected x [n, G], time_days [n], event [n], fold [n] with one n; got "
                        f"x {x.shape}, time {t.shape}, fold {fold.shape}")
    if x.shape[1] == 0:
        raise DataError("no genes: the signature has no gene in the expression matrix")
    oof = np.full(t.size, np.nan)
    folds, notes = [], []
    n_k = int(fold.max()) + 1
    for r, k in ((r, k) for r in range(folds_2d.shape[0]) for k in sorted(np.unique(folds_2d[r]))):
        tr, va = folds_2d[r] != k, folds_2d[r] == k
        if not e[va].any():
            notes.append(f"fold {k}: no event among its {int(va.sum())} patients; skipped")
            continue
        est = fit_estimator(cfg, x[tr], t[tr], e[tr])
        risk = np.asarray(est.predict(x[va]), dtype=float)
        if r == 0:
            oof[va] = risk
        row = {"fold": float(r * n_k + k), "harrell_c": M.harrell_c(risk, time_days=t[va], event=e[va]), "uno_c": float("nan")}
        try:
            row["uno_c"] = M.uno_c(risk, time_days=t[va], event=e[va], train_time_days=t[tr],
                                   train_event=e[tr])
        except DataError as err:
            notes.append(f"fold {k}: uno_c skipped ({err})")
        folds.append(row)
    if not folds:
        raise DataError(f"no fold had an event; {int(e.sum())} events over {t.size} patients")
    metrics: dict[str, float] = {}
    for name in ("harrell_c", "uno_c"):
        vals = [r[name] for r in folds]
        metrics[f"{name}_mean"], metrics[f"{name}_sd"] = _mean_sd(vals)
        for r in folds:
            metrics[f"{name}_fold{int(r['fold'])}"] = r[name]
    seen = ~np.isnan(oof)
    metrics["harrell_c_oof"] = M.harrell_c(oof[seen], time_days=t[seen], event=e[seen])
    if n_boot > 0:
        try:
            ci = M.bootstrap_ci(M.harrell_c, oof[seen], time_days=t[seen], event=e[seen], n_boot=n_boot, seed=seed)
            metrics["harrell_c_oof_low"], metrics["harrell_c_oof_high"] = ci.low, ci.high
        except DataError as err:
            notes.append(f"bootstrap skipped ({err})")
    final = fit_estimator(cfg, x, t, e)
    return SignatureFit(metrics=metrics, fold_metrics=folds, estimator=final,
                        times_days=survival_grid(cfg.survival_times_days, train_time_days=t),
                        n_patients=int(t.size), n_events=int(e.sum()), seconds=_time.perf_counter() - start,
                        notes=notes)
