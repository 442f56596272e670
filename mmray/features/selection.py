"""Fold-fitted feature transforms: fit on the training rows of a fold, apply to the rest.

Anything that learns from data (per-gene means and scales, which genes vary
most, which correlate with the label) must be fitted *inside* each training
fold: fitting it on the whole cohort leaks the test rows into the features
(the classic selection-bias mistake; Ambroise & McLachlan, PNAS 2002).  These
classes follow scikit-learn's ``fit(X, y) -> transform(X)`` contract, so they
go in a :class:`sklearn.pipeline.Pipeline` that cross-validation refits per
fold.  They never run at ingest.

``X``: (n_samples, n_features) DataFrame (column names kept) or array; NaN
means missing and is kept (scaling) or ignored (scores).  Each records what
it was fitted on: ``n_samples_seen_`` and, for DataFrames, ``fit_index_``.

``y`` for :class:`CorrelationFilter`: a 1-d numeric target (event 0/1, a
subtype code, a time) for ``pearson``/``spearman``, class labels for
``anova``, or a survival target for ``cox``: a scikit-survival structured
array (event, time), a DataFrame with ``event`` and ``time_days`` columns, or
a ``(time_days, event)`` tuple.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from mmray.errors import DataError

METHODS = ("spearman", "pearson", "anova", "cox")


def _as_array(X) -> np.ndarray:
    return X.to_numpy(dtype=np.float64) if isinstance(X, pd.DataFrame) else np.asarray(X, dtype=np.float64)


class _FoldFitted(TransformerMixin, BaseEstimator):
    """Bookkeeping shared by the transforms: remember what they were fitted on."""

    def _remember(self, X) -> np.ndarray:
        arr = _as_array(X)
        if arr.ndim != 2:
            raise DataError(f"{type(self).__name__}: X must be 2-d (n_samples, n_features), got shape {arr.shape}")
        self.n_samples_seen_ = arr.shape[0]
        self.n_features_in_ = arr.shape[1]
        self.fit_index_ = X.index.copy() if isinstance(X, pd.DataFrame) else None
        self.feature_names_in_ = np.asarray(X.columns, dtype=object) if isinstance(X, pd.DataFrame) else None
        return arr

    def _check(self, X) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        arr = _as_array(X)
        if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
            raise DataError(f"{type(self).__name__} was fitted on {self.n_features_in_} features, "
                             f"got X of shape {arr.shape}")
        return arr


class _Selector(_FoldFitted):
    def transform(self, X):
        self._check(X)
        if isinstance(X, pd.DataFrame):
            return X.iloc[:, self.support_indices_]
        return np.asarray(X)[:, self.support_indices_]

    def get_feature_names_out(self, input_features=None):
        names = self.feature_names_in_ if input_features is None else np.asarray(input_features, dtype=object)
        if names is None:
            names = np.asarray([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        return names[self.support_indices_]


class StandardScalerByGene(_FoldFitted):
    """Per-feature ``(x - mean) / std`` with mean and std from the training rows (NaN kept)."""

    def fit(self, X, y=None):
        arr = self._remember(X)
        with np.errstate(all="ignore"):
            self.mean_ = np.nan_to_num(np.nanmean(arr, axis=0), nan=0.0)
            scale = np.nanstd(arr, axis=0, ddof=0)
        self.scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return self

    def transform(self, X):
        arr = (self._check(X) - self.mean_) / self.scale_
        return pd.DataFrame(arr, index=X.index, columns=X.columns) if isinstance(X, pd.DataFrame) else arr

    def get_feature_names_out(self, input_features=None):
        return self.feature_names_in_ if input_features is None else np.asarray(input_features, dtype=object)


class VarianceTopK(_Selector):
    """Keep the ``k`` features with the largest variance over the training rows (ties: column order)."""

    def __init__(self, k: int = 1000):
        self.k = k

    def fit(self, X, y=None):
        arr = self._remember(X)
        if not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise DataError(f"VarianceTopK: k must be a positive integer, got {self.k!r}")
        with np.errstate(all="ignore"):
            var = np.nanvar(arr, axis=0)
        self.variances_ = np.where(np.isnan(var), -np.inf, var)
        order = np.argsort(-self.variances_, kind="stable")[: min(self.k, arr.shape[1])]
        self.support_indices_ = np.sort(order)
        return self


def survival_target(y) -> tuple[np.ndarray, np.ndarray]:
    """``(time_days float, event bool)`` from the forms in the module docstring."""
    if isinstance(y, tuple) and len(y) == 2:
        time, event = y
    elif isinstance(y, pd.DataFrame) and {"time_days", "event"} <= set(y.columns):
        time, event = y["time_days"], y["event"]
    elif isinstance(y, np.ndarray) and y.dtype.names and len(y.dtype.names) == 2:
        event_name, time_name = y.dtype.names
        time, event = y[time_name], y[event_name]
    else:
        raise DataError("CorrelationFilter(method='cox') needs a survival target: a scikit-survival "
                         "structured array, a DataFrame with time_days and event, or (time_days, event)")
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event).astype(bool)
    if time.ndim != 1 or time.shape != event.shape:
        raise DataError(f"survival target: time and event must be 1-d of one length, got {time.shape}, {event.shape}")
    return time, event


def cox_score_z(X: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Univariate Cox score-test z per column (Breslow ties), vectorised over columns.

    ``z = U / sqrt(I)`` with ``U = sum over events (x_i - mean of x over the
    risk set)`` and ``I = sum over events (variance of x over the risk set)``:
    the log-rank-type statistic of each feature at beta = 0.  Positive z:
    larger values, higher hazard.  NaN is replaced by the column mean.
    """
    X = np.array(X, dtype=np.float64)
    means = np.nanmean(np.where(np.isfinite(X), X, np.nan), axis=0)
    X = np.where(np.isfinite(X), X, np.nan_to_num(means)[None, :])
    sd = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    U, info = cox_score_parts(X, time, event)
    with np.errstate(all="ignore"):
        z = np.where(info > 0, U / np.sqrt(info), 0.0)
    return z


def cox_score_parts(X: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(U, I)`` per column of the univariate Cox score test at beta = 0 (Breslow ties), X without NaN.

    The parts of :func:`cox_score_z`; sums of ``U`` and ``I`` over independent
    strata (sites) give the site-stratified score test, whose risk sets never
    span strata (federated screening, :mod:`mmray.train.federated_stats`).
    """
    X = np.asarray(X, dtype=np.float64)
    order = np.argsort(-time, kind="stable")  # descending: risk set of position i = positions <= last tie
    t, e, Xs = time[order], event[order], X[order]
    s1, s2 = np.cumsum(Xs, axis=0), np.cumsum(Xs**2, axis=0)
    # last position holding each time value (ties share one risk set)
    last = np.searchsorted(-t, -t, side="right") - 1
    n_risk = (last + 1).astype(np.float64)[:, None]
    mean_r = s1[last] / n_risk
    var_r = np.maximum(s2[last] / n_risk - mean_r**2, 0.0)
    U = ((Xs - mean_r) * e[:, None]).sum(axis=0)
    info = (var_r * e[:, None]).sum(axis=0)
    return U, info


def _pearson(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise-complete Pearson r and two-sided p per column."""
    mask = np.isfinite(X) & np.isfinite(y)[:, None]
    n = mask.sum(axis=0).astype(np.float64)
    Xm, Ym = np.where(mask, X, 0.0), np.where(mask, y[:, None], 0.0)
    with np.errstate(all="ignore"):
        mx, my = Xm.sum(0) / n, Ym.sum(0) / n
        dx, dy = np.where(mask, X - mx, 0.0), np.where(mask, y[:, None] - my, 0.0)
        r = (dx * dy).sum(0) / np.sqrt((dx**2).sum(0) * (dy**2).sum(0))
        r = np.clip(np.nan_to_num(r), -1.0, 1.0)
        tstat = r * np.sqrt(np.maximum(n - 2, 0) / np.maximum(1 - r**2, 1e-300))
        p = np.where(n > 2, 2 * stats.t.sf(np.abs(tstat), np.maximum(n - 2, 1)), 1.0)
    return r, p


class CorrelationFilter(_Selector):
    """Keep the features associated with the target over the training rows.

    ``method``: ``spearman`` / ``pearson`` (|r| with a numeric target),
    ``anova`` (F test across classes, scikit-learn's ``f_classif``), ``cox``
    (univariate Cox score test, :func:`cox_score_z`).  A feature is kept when
    its p-value is at most ``max_p`` (None: no p-value cut) and its score
    (|r|, F or |z|) is at least ``min_score``; then the ``top_k`` best
    (None: all that passed).  When none passes, the single best is kept (a
    model needs one input) and ``kept_best_only_`` is True.
    """

    def __init__(self, method: str = "spearman", *, max_p: float | None = 0.05, min_score: float = 0.0,
                 top_k: int | None = None):
        self.method = method
        self.max_p = max_p
        self.min_score = min_score
        self.top_k = top_k

    def fit(self, X, y):
        arr = self._remember(X)
        if self.method not in METHODS:
            raise DataError(f"CorrelationFilter: unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.method == "cox":
            time, event = survival_target(y)
            z = cox_score_z(arr, time, event)
            self.scores_, self.p_values_ = np.abs(z), 2 * stats.norm.sf(np.abs(z))
        elif self.method == "anova":
            from sklearn.feature_selection import f_classif

            filled = np.where(np.isfinite(arr), arr, np.nan_to_num(np.nanmean(arr, axis=0))[None, :])
            with np.errstate(all="ignore"):
                f, p = f_classif(filled, np.asarray(y))
            self.scores_, self.p_values_ = np.nan_to_num(f), np.nan_to_num(p, nan=1.0)
        else:
            target = np.asarray(y, dtype=np.float64)
            if target.ndim != 1 or len(target) != arr.shape[0]:
                raise DataError(f"CorrelationFilter({self.method!r}) needs a 1-d numeric target of "
                                 f"{arr.shape[0]} values; for survival use method='cox'")
            if self.method == "spearman":
                arr = pd.DataFrame(arr).rank().to_numpy()
                target = pd.Series(target).rank().to_numpy()
            r, p = _pearson(arr, target)
            self.scores_, self.p_values_ = np.abs(r), p
        return self._select()

    def fit_scores(self, scores, p_values, *, feature_names=None) -> CorrelationFilter:
        """Fit from scores computed elsewhere (e.g. summed over federated sites): the selection rule of ``fit``."""
        self.scores_ = np.asarray(scores, dtype=np.float64)
        self.p_values_ = np.asarray(p_values, dtype=np.float64)
        self.n_features_in_ = self.scores_.shape[0]
        self.n_samples_seen_, self.fit_index_ = None, None
        self.feature_names_in_ = None if feature_names is None else np.asarray(feature_names, dtype=object)
        return self._select()

    def _select(self) -> CorrelationFilter:
        passed = self.scores_ >= self.min_score
        if self.max_p is not None:
            passed &= self.p_values_ <= self.max_p
        idx = np.flatnonzero(passed)
        self.kept_best_only_ = idx.size == 0
        if self.kept_best_only_:
            idx = np.array([int(np.argmax(self.scores_))])
        if self.top_k is not None:
            idx = idx[np.argsort(-self.scores_[idx], kind="stable")[: self.top_k]]
        self.support_indices_ = np.sort(idx)
        return self
