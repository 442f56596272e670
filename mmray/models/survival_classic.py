"""Classical survival models (scikit-survival) behind one small interface: risk scores and survival curves.

The baselines survival papers report next to neural fusion models, and that
often win on cohorts of a few hundred patients:

* :class:`Coxnet` -- elastic-net Cox (``CoxnetSurvivalAnalysis``); the
  penalty ``alpha`` is chosen by an inner cross-validation on the rows it is
  fitted on (the training fold), never on held-out rows;
* :class:`CoxPHRidge` -- Cox proportional hazards with a ridge penalty
  (``CoxPHSurvivalAnalysis(alpha=...)``);
* :class:`RSF` -- random survival forest (``RandomSurvivalForest``);
* :class:`GBSA` -- gradient-boosted Cox model on regression trees
  (``GradientBoostingSurvivalAnalysis``, ``loss="coxph"``).

Every model takes a dense float matrix ``X [n, d]`` (the training code's
fold-fitted preprocessing makes it: :mod:`mmray.train.fold_classic`) and
gives ``predict(X) -> [n]`` risk (higher = earlier event: the Cox linear
predictor, or the forest's summed cumulative hazard) and
``survival(X, times_days) -> [n, T]`` from the model's own survival
functions (Breslow baseline for the Cox-type ones, the forest's
Nelson-Aalen leaves for RSF).  No Ray imports.
"""

from __future__ import annotations

import warnings

import numpy as np
from sksurv.util import Surv

from mmray.errors import DataError


def survival_labels(time_days, event) -> np.ndarray:
    t = np.asarray(time_days, float).reshape(-1)
    e = np.asarray(event).astype(bool).reshape(-1)
    if t.shape != e.shape:
        raise DataError(f"time_days has {t.size} values, event {e.size}")
    if not e.any():
        raise DataError("no events among the training rows: a survival model cannot be fitted")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise DataError("time_days must be finite and > 0 for every training row")
    return Surv.from_arrays(e, t)


def _check_x(X, *, d: int | None = None) -> np.ndarray:
    x = np.asarray(X, float)
    if x.ndim != 2:
        raise DataError(f"expected a matrix [n, d], got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise DataError(f"expected {d} feature columns (as in training), got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{int((~np.isfinite(x)).sum())} NaN/inf feature value(s); impute before the model")
    return x


def curves_at(functions, times_days) -> np.ndarray:
    """``[n, T]`` values of sksurv step functions at ``times_days`` (clipped into each function's domain)."""
    t = np.asarray(times_days, float).reshape(-1)
    return np.vstack([fn(np.clip(t, fn.domain[0], fn.domain[1])) for fn in functions]) if len(functions) \
        else np.empty((0, t.size))


class _Classic:
    """Shared fit / predict / survival plumbing; subclasses build ``self._estimator()``."""

    family = ""

    def fit(self, X, *, time_days, event) -> _Classic:
        x = _check_x(X)
        y = survival_labels(time_days, event)
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{x.shape[0]} feature rows for {y.shape[0]} labels")
        self.n_features_ = x.shape[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on small folds; scores are checked downstream
            self.model_ = self._fit(x, y)
        return self

    def _fit(self, x, y):
        return self._estimator().fit(x, y)

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.model_.predict(_check_x(X, d=self.n_features_)), float).reshape(-1)

    def survival(self, X, times_days) -> np.ndarray:
        fns = self.model_.predict_survival_function(_check_x(X, d=self.n_features_))
        return curves_at(fns, times_days)


class CoxPHRidge(_Classic):
    """Cox model with a ridge penalty ``alpha`` (on the standardised features the training code gives)."""

    family = "coxph_ridge"

    def __init__(self, *, alpha: float = 10.0, ties: str = "efron", n_iter: int = 100):
        self.alpha, self.ties, self.n_iter = alpha, ties, n_iter

    def _estimator(self):
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        return CoxPHSurvivalAnalysis(alpha=self.alpha, ties=self.ties, n_iter=self.n_iter)


class Coxnet(_Classic):
    """Elastic-net Cox; ``alpha`` picked on the fitting rows by ``inner_folds``-fold CV of Harrell's C.

    One regularisation path (``n_alphas`` values down to ``alpha_min_ratio``
    of the largest) is fitted on each inner split; the alpha with the best
    mean held-out C wins and the path is refitted on every row.
    """

    family = "coxnet"

    def __init__(self, *, l1_ratio: float = 0.5, n_alphas: int = 30, alpha_min_ratio: float = 0.02,
                 inner_folds: int = 3, seed: int = 0):
        self.l1_ratio, self.n_alphas, self.alpha_min_ratio = l1_ratio, n_alphas, alpha_min_ratio
        self.inner_folds, self.seed = inner_folds, seed

    def _path(self, alphas=None):
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        return CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, n_alphas=self.n_alphas, alphas=alphas,
                                      alpha_min_ratio=self.alpha_min_ratio, fit_baseline_model=True, max_iter=20000)

    def _fit(self, x, y):
        from sklearn.model_selection import StratifiedKFold
        from sksurv.metrics import concordance_index_censored

        full = self._path().fit(x, y)
        alphas = np.asarray(full.alphas_, float)
        event, time = y["event"], y["time"]
        k = min(self.inner_folds, int(event.sum()), int((~event).sum()) or self.inner_folds)
        scores = np.full((max(k, 1), alphas.size), np.nan)
        if k >= 2:
            for i, (tr, va) in enumerate(StratifiedKFold(k, shuffle=True, random_state=self.seed).split(x, event)):
                if not event[tr].any() or not event[va].any():
                    continue
                try:
                    path = self._path(alphas=alphas).fit(x[tr], y[tr])
                except ArithmeticError:
                    continue
                for j, a in enumerate(path.alphas_):
                    risk = path.predict(x[va], alpha=a)
                    if np.ptp(risk) > 0:
                        scores[i, j] = concordance_index_censored(event[va], time[va], risk)[0]
        mean = np.nanmean(np.where(np.isnan(scores).all(0), 0.5, scores), axis=0) if np.isfinite(scores).any() \
            else np.full(alphas.size, 0.5)
        self.cv_scores_ = mean
        # Ties go to the larger penalty (simpler model); the path is sorted from large to small alpha.
        self.alpha_ = float(alphas[int(np.argmax(mean))])
        return full

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.model_.predict(_check_x(X, d=self.n_features_), alpha=self.alpha_), float)

    def survival(self, X, times_days) -> np.ndarray:
        fns = self.model_.predict_survival_function(_check_x(X, d=self.n_features_), alpha=self.alpha_)
        return curves_at(fns, times_days)

    @property
    def coef_(self) -> np.ndarray:
        j = int(np.argmin(np.abs(self.model_.alphas_ - self.alpha_)))
        return np.asarray(self.model_.coef_[:, j], float)


class RSF(_Classic):
    """Random survival forest (log-rank splits); risk is the summed cumulative hazard."""

    family = "rsf"

    def __init__(self, *, n_estimators: int = 200, min_samples_leaf: int = 8, max_features: float = 0.5,
                 max_depth: int | None = None, seed: int = 0, n_jobs: int = 1):
        self.n_estimators, self.min_samples_leaf, self.max_features = n_estimators, min_samples_leaf, max_features
        self.max_depth, self.seed, self.n_jobs = max_depth, seed, n_jobs

    def _estimator(self):
        from sksurv.ensemble import RandomSurvivalForest

        return RandomSurvivalForest(n_estimators=int(self.n_estimators), min_samples_leaf=int(self.min_samples_leaf),
                                    max_features=float(self.max_features), max_depth=self.max_depth,
                                    random_state=self.seed, n_jobs=self.n_jobs, low_memory=False)


class GBSA(_Classic):
    """Gradient-boosted Cox partial likelihood on regression trees (risk = log-hazard)."""

    family = "gbsa"

    def __init__(self, *, n_estimators: int = 150, learning_rate: float = 0.05, max_depth: int = 2,
                 subsample: float = 0.8, min_samples_leaf: int = 8, dropout_rate: float = 0.0, seed: int = 0):
        self.n_estimators, self.learning_rate, self.max_depth = n_estimators, learning_rate, max_depth
        self.subsample, self.min_samples_leaf, self.dropout_rate, self.seed = (subsample, min_samples_leaf,
                                                                                dropout_rate, seed)

    def _estimator(self):
        from sksurv.ensemble import GradientBoostingSurvivalAnalysis

        return GradientBoostingSurvivalAnalysis(loss="coxph", n_estimators=int(self.n_estimators),
                                                learning_rate=float(self.learning_rate),
                                                max_depth=int(self.max_depth), subsample=float(self.subsample),
                                                min_samples_leaf=int(self.min_samples_leaf),
                                                dropout_rate=float(self.dropout_rate), random_state=self.seed)


CLASSIC_FAMILIES = {c.family: c for c in (Coxnet, CoxPHRidge, RSF, GBSA)}
