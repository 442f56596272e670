"""Cox partial likelihood as a LightGBM custom objective (numpy, ``O(n log n)``).

LightGBM has no Cox objective (XGBoost's ``survival:cox`` is the model), so
we give it the gradient and diagonal Hessian of the Breslow negative log
partial likelihood in the raw scores ``eta``:

    L = -sum_i d_i [eta_i - log S(t_i)],   S(t) = sum_{j: t_j >= t} exp(eta_j)
    dL/deta_k   = exp(eta_k) A(t_k) - d_k,              A(t) = sum_{i: t_i <= t} d_i / S(t_i)
    d2L/deta_k2 = exp(eta_k) A(t_k) - exp(2 eta_k) B(t_k),  B(t) = sum_{i: t_i <= t} d_i / S(t_i)^2

``S``, ``A`` and ``B`` are cumulative sums over distinct times (tied times
share their risk set: Breslow).  Scores are shifted by their max before
``exp``; every term is a ratio ``exp(eta)/S`` so the shift cancels.

LightGBM datasets carry one label column, so survival labels are encoded as
XGBoost does: ``+time`` for an event, ``-time`` for a censored patient
(:func:`encode_label`).  Ray's LightGBM trainer can pass that column as is.
"""

from __future__ import annotations

import numpy as np
from sksurv.metrics import concordance_index_censored

from mmray.errors import DataError


def encode_label(time_days, event) -> np.ndarray:
    """``[n]`` signed survival label: ``time`` if event else ``-time`` (times must be > 0)."""
    t = np.asarray(time_days, float)
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise DataError("survival labels need finite time_days > 0 to be encoded for LightGBM")
    return np.where(np.asarray(event).astype(bool), t, -t)


def decode_label(label) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_label`: ``(time_days, event)``."""
    y = np.asarray(label, float)
    return np.abs(y), y > 0


def _risk_sums(eta: np.ndarray, time_days: np.ndarray, event: np.ndarray):
    order = np.argsort(time_days, kind="stable")
    t, d = time_days[order], event[order].astype(float)
    w = np.exp(eta[order] - eta.max())
    uniq, first = np.unique(t, return_index=True)
    group = np.searchsorted(uniq, t)
    # risk-set sum at each distinct time: sum of w over rows from the group's first row on
    s = np.cumsum(w[::-1])[::-1][first]
    n_ev = np.bincount(group, weights=d, minlength=uniq.size)
    return order, w, d, group, s, n_ev


def cox_nll(eta, *, time_days, event) -> float:
    """Breslow negative log partial likelihood (a sum over events) at raw scores ``eta [n]``."""
    eta = np.asarray(eta, float)
    order, _, d, _, s, n_ev = _risk_sums(eta, np.asarray(time_days, float), np.asarray(event))
    log_s = np.log(s) + eta.max()
    return float(-(d * eta[order]).sum() + (n_ev * log_s).sum())


def cox_grad_hess(eta, *, time_days, event) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and diagonal Hessian ``([n], [n])`` of :func:`cox_nll` w.r.t. ``eta``."""
    eta = np.asarray(eta, float)
    order, w, d, group, s, n_ev = _risk_sums(eta, np.asarray(time_days, float), np.asarray(event))
    a = np.cumsum(n_ev / s)[group]
    b = np.cumsum(n_ev / s**2)[group]
    grad, hess = np.empty_like(eta), np.empty_like(eta)
    grad[order] = w * a - d
    hess[order] = np.maximum(w * a - w * w * b, 1e-16)
    return grad, hess


def cox_objective(preds: np.ndarray, train_data) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM custom objective (``params["objective"] = cox_objective``); labels from :func:`encode_label`."""
    time_days, event = decode_label(train_data.get_label())
    return cox_grad_hess(preds, time_days=time_days, event=event)


def cindex_eval(preds: np.ndarray, eval_data) -> tuple[str, float, bool]:
    """LightGBM ``feval``: Harrell's C of the raw scores (higher is better)."""
    time_days, event = decode_label(eval_data.get_label())
    if not event.any():
        return "c_index", 0.5, True
    return "c_index", float(concordance_index_censored(event, time_days, preds)[0]), True
