"""Survival and subtype metrics (numpy, scikit-survival, scikit-learn; no Ray).

Every metric is a library's: Harrell's C (``concordance_index_censored``),
Uno's C (``concordance_index_ipcw``), cumulative/dynamic AUC
(``cumulative_dynamic_auc``), integrated Brier score
(``integrated_brier_score``), one-vs-rest AUC (``roc_auc_score``) and
balanced accuracy.  This module validates inputs once, at the boundary,
turns survival outputs into survival functions (Breslow baseline for Cox
models, ``cumprod(1 - hazard)`` for discrete-time models), clips evaluation
times into the range the estimators accept (reporting each clip as a note),
and adds percentile bootstrap intervals.

Shapes: ``n`` patients, ``T`` evaluation times, ``K`` time bins, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from mmray.errors import DataError


# ----------------------------------------------------------------- validation
def check_survival(time_days, event, *, name: str = "survival labels",
                   need_events: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(time_days [n] float, event [n] bool)`` or :class:`DataError` saying what is wrong."""
    t = np.asarray(time_days, dtype=float).reshape(-1)
    e_raw = np.asarray(event).reshape(-1)
    if t.shape != e_raw.shape:
        raise DataError(f"{name}: time_days has {t.size} values but event has {e_raw.size}")
    if t.size == 0:
        raise DataError(f"{name}: no patients")
    if not np.all(np.isfinite(t)):
        raise DataError(f"{name}: time_days has {int((~np.isfinite(t)).sum())} NaN/inf value(s); "
                        f"drop those patients or fill their follow-up time")
    if np.any(t <= 0):
        raise DataError(f"{name}: time_days must be > 0 (days from the index date), found "
                        f"{int((t <= 0).sum())} value(s) <= 0, e.g. {t[t <= 0][:3].tolist()}")
    if e_raw.dtype != bool and not np.isin(e_raw, (0, 1)).all():
        raise DataError(f"{name}: event must be bool or 0/1, got values {np.unique(e_raw)[:5].tolist()}")
    e = e_raw.astype(bool)
    if need_events and not e.any():
        raise DataError(f"{name}: all {t.size} patients are censored (no events); survival metrics are "
                        f"undefined. Use more patients per fold or fewer folds")
    return t, e


def check_scores(x, *, n: int, name: str = "risk", ndim: int = 1) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != ndim or a.shape[0] != n:
        raise DataError(f"{name}: expected {'[n]' if ndim == 1 else '[n, T]'} with n={n}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name}: {int((~np.isfinite(a)).sum())} NaN/inf value(s); the model diverged or a "
                        f"masked modality leaked NaN")
    return a


@dataclass(frozen=True)
class EvalTimes:
    """Evaluation times after clipping, and what was changed."""

    times_days: np.ndarray
    notes: tuple[str, ...] = ()


def eval_times(times_days: Sequence[float], *, test_time_days, train_time_days=None) -> EvalTimes:
    """Clip ``times_days`` into ``[min test time, min(max test, max train time))``.

    scikit-survival's AUC and Brier estimators accept only times inside the
    test follow-up, and the censoring distribution (fitted on training data)
    must be positive there.  Out-of-range times are moved to the nearest
    allowed value and reported as notes; duplicates are merged.
    """
    t = np.asarray(times_days, dtype=float).reshape(-1)
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise DataError(f"evaluation times must be finite and non-empty, got {t.tolist()}")
    test = np.asarray(test_time_days, float)
    lo = float(test.min())
    hi = float(test.max())
    if train_time_days is not None:
        hi = min(hi, float(np.max(train_time_days)))
    hi_open = np.nextafter(hi, -np.inf)
    if hi_open < lo:
        raise DataError(f"no valid evaluation time: test follow-up is [{lo}, {test.max()}] and training "
                        f"follow-up ends at {hi}")
    clipped = np.clip(t, lo, hi_open)
    notes = []
    moved = t != clipped
    if moved.any():
        notes.append(f"{int(moved.sum())} evaluation time(s) {t[moved].tolist()} outside the follow-up "
                     f"range [{lo:g}, {hi:g}) clipped to {clipped[moved].tolist()}")
    uniq = np.unique(clipped)
    if uniq.size < clipped.size:
        notes.append(f"{clipped.size - uniq.size} duplicate evaluation time(s) merged")
    return EvalTimes(times_days=uniq, notes=tuple(notes))


def default_eval_times(time_days, event, *, quantiles=(0.25, 0.5, 0.75)) -> np.ndarray:
    """Quantiles of the event times (e.g. of the training fold): a sensible grid."""
    t, e = check_survival(time_days, event)
    return np.unique(np.quantile(t[e], quantiles))


# ----------------------------------------------------------- survival metrics
def _within_training_follow_up(t: np.ndarray, e: np.ndarray, train_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Censor test follow-up at the last training time (the censoring estimate ends there).

    Exact for every IPCW metric here at evaluation times (and ``tau``) before
    that time: such a patient only counts as "still at risk at t", which
    stays true.  Without it sksurv refuses test times past the training range.
    """
    cap = float(train_t.max())
    beyond = t >= cap
    return np.where(beyond, cap, t), e & ~beyond


def harrell_c(risk, *, time_days, event) -> float:
    """Harrell's concordance index; higher ``risk`` means earlier event."""
    t, e = check_survival(time_days, event)
    r = check_scores(risk, n=t.size)
    try:
        return float(concordance_index_censored(e, t, r)[0])
    except ValueError as err:  # scikit-survival's NoComparablePairException: too few patients or events
        raise DataError(f"Harrell's C is undefined here: {err} ({t.size} patient(s), {int(e.sum())} event(s))") \
            from err


def uno_c(risk, *, time_days, event, train_time_days, train_event, tau_days: float | None = None) -> float:
    """Uno's IPCW concordance, censoring distribution from the training set.

    ``tau_days`` truncates follow-up (default: the last training time, which
    the censoring estimate needs anyway).
    """
    t, e = check_survival(time_days, event)
    tt, te = check_survival(train_time_days, train_event, name="training labels", need_events=False)
    r = check_scores(risk, n=t.size)
    tau = float(tt.max()) if tau_days is None else min(float(tau_days), float(tt.max()))
    t, e = _within_training_follow_up(t, e, tt)
    if not (e & (t < tau)).any():
        raise DataError(f"Uno's C: no test event before tau={tau:g} days")
    try:
        return float(concordance_index_ipcw(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), r, tau=tau)[0])
    except ValueError as err:
        raise DataError(f"Uno's C failed: {err}") from err


def td_auc(risk, *, time_days, event, train_time_days, train_event, times_days) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC at ``times_days`` (already valid: see :func:`eval_times`).

    Censoring weights come from the training labels; test follow-up past the
    last training time is censored there (exact for times before it).

    ``risk`` ``[n]`` or ``[n, T]`` (time-dependent).  Returns ``(auc [T], mean_auc)``.
    """
    t, e = check_survival(time_days, event)
    tt, te = check_survival(train_time_days, train_event, name="training labels", need_events=False)
    r = np.asarray(risk, float)
    check_scores(r, n=t.size, ndim=r.ndim)
    t, e = _within_training_follow_up(t, e, tt)
    try:
        auc, mean = cumulative_dynamic_auc(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), r, times_days)
    except ValueError as err:
        raise DataError(f"time-dependent AUC failed: {err}; clip the times with eval_times()") from err
    return np.asarray(auc, float), float(mean)


def integrated_brier(surv, *, time_days, event, train_time_days, train_event, times_days) -> float:
    """Integrated Brier score of survival probabilities ``surv [n, T]`` at ``times_days [T]``."""
    t, e = check_survival(time_days, event)
    tt, te = check_survival(train_time_days, train_event, name="training labels", need_events=False)
    times = np.asarray(times_days, float)
    s = check_scores(surv, n=t.size, name="survival probabilities", ndim=2)
    if s.shape[1] != times.size:
        raise DataError(f"survival probabilities have {s.shape[1]} columns for {times.size} times")
    if times.size < 2:
        raise DataError("the integrated Brier score needs at least 2 evaluation times")
    t, e = _within_training_follow_up(t, e, tt)
    try:
        return float(integrated_brier_score(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), s, times))
    except ValueError as err:
        raise DataError(f"integrated Brier score failed: {err}; clip the times with eval_times()") from err


# ------------------------------------------------------- survival functions
class BreslowSurvival:
    """Survival functions of a Cox-type model from the Breslow baseline hazard.

    Fit on the *training* fold's risk scores and labels (sksurv's
    ``BreslowEstimator``), then ``S(t | x) = exp(-H0(t) * exp(risk(x)))``.
    """

    def fit(self, risk, *, time_days, event) -> BreslowSurvival:
        t, e = check_survival(time_days, event, name="Breslow training labels")
        r = check_scores(risk, n=t.size)
        est = BreslowEstimator().fit(r, e, t)
        self.times_days_ = np.asarray(est.cum_baseline_hazard_.x, float)
        self.cum_hazard_ = np.asarray(est.cum_baseline_hazard_.y, float)
        return self

    def baseline_cum_hazard(self, times_days) -> np.ndarray:
        """``H0(t)`` ``[T]``; 0 before the first training time, held after the last."""
        idx = np.searchsorted(self.times_days_, np.asarray(times_days, float), side="right") - 1
        return np.where(idx >= 0, self.cum_hazard_[np.clip(idx, 0, None)], 0.0)

    def survival(self, risk, times_days) -> np.ndarray:
        """``[n, T]`` survival probabilities."""
        r = check_scores(risk, n=np.asarray(risk).shape[0])
        return np.exp(-np.outer(np.exp(r), self.baseline_cum_hazard(times_days)))


def discrete_survival_at(hazard_logits, *, bin_cuts_days: Sequence[float], max_time_days: float,
                         times_days) -> np.ndarray:
    """``[n, T]`` survival of a discrete-time model at arbitrary times.

    ``S_k = prod_{j<=k} (1 - sigmoid(logit_j))`` is the survival at the end of
    bin ``k``; bins end at ``bin_cuts_days`` and the last at ``max_time_days``
    (the longest training follow-up).  Between bin ends ``S`` is linearly
    interpolated from ``S(0) = 1``; after the last it is held.
    """
    z = check_scores(hazard_logits, n=np.asarray(hazard_logits).shape[0], name="hazard logits", ndim=2)
    cuts = np.asarray(bin_cuts_days, float)
    if z.shape[1] != cuts.size + 1:
        raise DataError(f"{z.shape[1]} hazard logits per patient but {cuts.size + 1} bins")
    log_1mh = -np.logaddexp(0.0, z)  # log(1 - sigmoid(z))
    s = np.exp(np.cumsum(log_1mh, axis=1))
    knots = np.concatenate([[0.0], cuts, [max(float(max_time_days), cuts[-1] if cuts.size else 0.0)]])
    values = np.concatenate([np.ones((s.shape[0], 1)), s], axis=1)
    times = np.asarray(times_days, float)
    return np.stack([np.interp(times, knots, row) for row in values])


# ------------------------------------------------------------- subtype metrics
def subtype_auc(y_true, proba) -> float:
    """One-vs-rest macro AUC from class probabilities ``[n, C]``.

    Classes absent from ``y_true`` (small folds) are left out of the average,
    as sklearn would refuse them.
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    p = check_scores(proba, n=y.size, name="class probabilities", ndim=2)
    present = np.unique(y)
    if present.size < 2:
        raise DataError(f"subtype AUC needs at least 2 classes in y_true, got {present.tolist()}")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))


def balanced_accuracy(y_true, y_pred) -> float:
    y, yp = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y.shape != yp.shape or y.size == 0:
        raise DataError(f"y_true and y_pred must be equal non-empty [n], got {y.shape} and {yp.shape}")
    return float(balanced_accuracy_score(y, yp))


# ----------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    point: float
    low: float
    high: float
    n_boot: int
    n_failed: int = 0
    level: float = 0.95

    def as_dict(self, name: str) -> dict[str, float]:
        """``{name: point, name_low: low, name_high: high}`` for a results table."""
        return {name: self.point, f"{name}_low": self.low, f"{name}_high": self.high}


def bootstrap_ci(metric: Callable[..., float], *arrays, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, **named_arrays) -> Interval:
    """Percentile bootstrap interval of ``metric(*arrays, **named_arrays)``, resampling patients (rows).

    Every array (positional or named) is resampled with the same row draw,
    e.g. ``bootstrap_ci(harrell_c, risk, time_days=t, event=e)``.  Resamples
    where the metric is undefined (e.g. no events drawn) are skipped and
    counted in ``n_failed``; more than half failing is an error.  Fixed
    arguments (a training set) go in a ``partial``.
    """
    if not arrays and not named_arrays:
        raise DataError("bootstrap_ci needs at least one array to resample")
    arrays = [np.asarray(a) for a in arrays]
    named = {k: np.asarray(v) for k, v in named_arrays.items()}
    shapes = [a.shape for a in arrays] + [v.shape for v in named.values()]
    n = shapes[0][0]
    if any(s[0] != n for s in shapes):
        raise DataError(f"bootstrap arrays must share their first dimension, got {shapes}")
    point = float(metric(*arrays, **named))
    rng = np.random.default_rng(seed)
    stats, failed = [], 0
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        try:
            stats.append(float(metric(*(a[idx] for a in arrays), **{k: v[idx] for k, v in named.items()})))
        except (DataError, ValueError, ZeroDivisionError):
            failed += 1
    if len(stats) < max(1, n_boot // 2):
        raise DataError(f"bootstrap: the metric failed on {failed} of {n_boot} resamples; too few patients/events")
    q = (1 - level) / 2
    low, high = np.quantile(stats, [q, 1 - q])
    return Interval(point=point, low=float(low), high=float(high), n_boot=n_boot, n_failed=failed, level=level)


# ------------------------------------------------------------------- reports
@dataclass
class SurvivalReport:
    harrell_c: float
    uno_c: float | None = None
    times_days: np.ndarray | None = None
    auc: np.ndarray | None = None
    mean_auc: float | None = None
    ibs: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"harrell_c": self.harrell_c, "uno_c": self.uno_c, "mean_auc": self.mean_auc, "ibs": self.ibs}
        if self.times_days is not None and self.auc is not None:
            out.update({f"auc_{t:g}d": float(a) for t, a in zip(self.times_days, self.auc)})
        out["notes"] = list(self.notes)
        return out


def evaluate_survival(risk, *, time_days, event, train_time_days, train_event, times_days=None,
                      surv_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> SurvivalReport:
    """All survival metrics of one fold; a metric that cannot be computed becomes a note.

    ``surv_fn(times [T]) -> [n, T]`` gives the test patients' survival
    functions (e.g. ``lambda ts: BreslowSurvival().fit(train_risk, ...).survival(risk, ts)``);
    without it the Brier score is skipped.  ``times_days`` defaults to the
    quartiles of the training event times.
    """
    rep = SurvivalReport(harrell_c=harrell_c(risk, time_days=time_days, event=event))
    kw = {"time_days": time_days, "event": event, "train_time_days": train_time_days, "train_event": train_event}
    try:
        rep.uno_c = uno_c(risk, **kw)
    except DataError as err:
        rep.notes.append(f"uno_c skipped: {err}")
    grid = default_eval_times(train_time_days, train_event) if times_days is None else times_days
    et = eval_times(grid, test_time_days=time_days, train_time_days=train_time_days)
    rep.notes.extend(et.notes)
    rep.times_days = et.times_days
    try:
        rep.auc, rep.mean_auc = td_auc(risk, times_days=et.times_days, **kw)
    except DataError as err:
        rep.notes.append(f"td_auc skipped: {err}")
    if surv_fn is not None:
        try:
            rep.ibs = integrated_brier(surv_fn(et.times_days), times_days=et.times_days, **kw)
        except DataError as err:
            rep.notes.append(f"ibs skipped: {err}")
    return rep
