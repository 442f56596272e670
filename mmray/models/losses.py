"""Survival and subtype losses (plain PyTorch).

* :func:`cox_ph_loss`: negative Cox partial log-likelihood, Breslow or Efron
  ties, averaged over events.  Vectorised: risk sets come from a
  ``logcumsumexp`` over patients sorted by decreasing time, tie groups share
  the risk set of their last member.  A batch without events gives 0 (with a
  gradient of zeros), so minibatch training never sees NaN.
* :class:`TimeBins` + :func:`discrete_time_nll`: the discrete-time hazard
  model of Zadeh & Schmid (2021) as used by PORPOISE / MCAT: bins from
  quantiles of the event times of uncensored training patients.
* :func:`subtype_ce`: cross-entropy with optional class weights.
* :func:`build_loss`: the ``loss_fn(output, batch)`` a training loop calls.

With the Cox loss the risk set is the minibatch: use batches with several
events (64+ patients), or full-batch training on small cohorts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmray.errors import DataError, UnknownNameError

TASKS = ("survival_cox", "survival_discrete", "subtype")
TIES = ("breslow", "efron")


def _check_survival_tensors(risk: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor) -> None:
    if risk.ndim != 1:
        raise DataError(f"Cox loss wants risk of shape [B], got {tuple(risk.shape)}; squeeze the model output")
    if time_days.shape != risk.shape or event.shape != risk.shape:
        raise DataError(f"risk, time_days and event must all be [B]; got {tuple(risk.shape)}, "
                        f"{tuple(time_days.shape)}, {tuple(event.shape)}")


def cox_ph_loss(risk: torch.Tensor, *, time_days: torch.Tensor, event: torch.Tensor,
                ties: str = "efron") -> torch.Tensor:
    """Negative Cox partial log-likelihood averaged over events.

    ``risk`` ``[B]`` log-hazard ratios, ``time_days`` ``[B]``, ``event`` ``[B]``
    (bool or 0/1).  ``ties``: ``"breslow"`` or ``"efron"``.  Returns a scalar.
    """
    if ties not in TIES:
        raise UnknownNameError("ties method", ties, TIES)
    _check_survival_tensors(risk, time_days, event)
    event = event.to(torch.bool)
    n_events = int(event.sum())
    if n_events == 0:
        return (risk * 0.0).sum()
    # Sort by decreasing time: the risk set of position i is positions 0..end(i).
    order = torch.argsort(time_days, descending=True, stable=True)
    eta, t, d = risk[order], time_days[order], event[order]
    _, counts = torch.unique_consecutive(t, return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(counts), device=eta.device), counts)
    group_end = torch.cumsum(counts, 0) - 1
    log_risk_set = torch.logcumsumexp(eta, 0)[group_end]  # [G], one per distinct time
    ev_eta = eta[d]
    ev_group = group[d]
    if ties == "breslow":
        ll = ev_eta - log_risk_set[ev_group]
        return -ll.sum() / n_events
    # Efron: the l-th of the d tied events sees R - (l/d) * E, E = sum exp(eta) over the tied events.
    G = len(counts)
    d_g = torch.zeros(G, dtype=eta.dtype, device=eta.device).index_add_(0, ev_group, torch.ones_like(ev_eta))
    # rank of each event within its tie group (events are contiguous per group after sorting)
    first = torch.cumsum(d_g, 0) - d_g
    rank = torch.arange(n_events, device=eta.device, dtype=eta.dtype) - first[ev_group]
    shift = torch.zeros(G, dtype=eta.dtype, device=eta.device).scatter_reduce(
        0, ev_group, ev_eta.detach(), reduce="amax", include_self=False)
    e_sum = torch.zeros(G, dtype=eta.dtype, device=eta.device).index_add(
        0, ev_group, torch.exp(ev_eta - shift[ev_group]))
    log_e = torch.log(e_sum[ev_group]) + shift[ev_group]
    frac = rank / d_g[ev_group]
    log_r = log_risk_set[ev_group]
    # log(R - frac * E) = log R + log1p(-frac * E / R); E <= R and frac < 1, so the argument is > 0.
    log_denom = log_r + torch.log1p(-frac * torch.exp(log_e - log_r))
    ll = ev_eta - log_denom
    return -ll.sum() / n_events


@dataclass(frozen=True)
class TimeBins:
    """Discrete time bins from quantiles of event times among uncensored patients.

    ``cuts_days`` are the ``n_bins - 1`` interior cut points; bin ``k`` holds
    times in ``[cuts[k-1], cuts[k])``; the first bin starts at 0 and the last
    is open-ended, so any time maps to a bin.  ``max_days`` is the longest
    training follow-up (where survival curves are drawn to).
    """

    cuts_days: tuple[float, ...]
    max_days: float

    def __post_init__(self):
        object.__setattr__(self, "cuts_days", tuple(float(c) for c in self.cuts_days))
        object.__setattr__(self, "max_days", float(self.max_days))

    @property
    def n_bins(self) -> int:
        return len(self.cuts_days) + 1

    @classmethod
    def fit(cls, time_days: Sequence[float], event: Sequence[bool], n_bins: int) -> TimeBins:
        """Cut points at the ``1/n_bins, ..., (n_bins-1)/n_bins`` quantiles of event times.

        Fit on training rows only.  Duplicate quantiles (many tied event times)
        are merged, so fewer bins than asked may come back (``.n_bins``).
        """
        t = np.asarray(time_days, dtype=float)
        e = np.asarray(event).astype(bool)
        if n_bins < 2:
            raise DataError(f"n_bins must be >= 2, got {n_bins}")
        if t.shape != e.shape or t.ndim != 1:
            raise DataError(f"time_days and event must be 1-D of equal length, got {t.shape} and {e.shape}")
        if not e.any():
            raise DataError("TimeBins.fit needs at least one event (uncensored patient) to place the bins")
        q = np.quantile(t[e], np.linspace(0, 1, n_bins + 1)[1:-1])
        cuts = np.unique(q)
        return cls(cuts_days=tuple(float(c) for c in cuts), max_days=float(t.max()))

    def transform(self, time_days) -> np.ndarray | torch.Tensor:
        """Bin index (long) of each time; a torch tensor in gives a tensor out."""
        if isinstance(time_days, torch.Tensor):
            cuts = torch.as_tensor(self.cuts_days, dtype=time_days.dtype, device=time_days.device)
            return torch.bucketize(time_days, cuts, right=True)
        return np.searchsorted(np.asarray(self.cuts_days), np.asarray(time_days, dtype=float), side="right")

    def to_dict(self) -> dict:
        """JSON-able, for checkpoints; ``TimeBins(**d)`` rebuilds it."""
        return {"cuts_days": list(self.cuts_days), "max_days": self.max_days}


def discrete_time_nll(logits: torch.Tensor, *, bin_index: torch.Tensor, event: torch.Tensor,
                      alpha: float = 0.4) -> torch.Tensor:
    """Discrete-time survival negative log-likelihood (PORPOISE ``nll_loss``).

    ``logits`` ``[B, K]`` hazard logits, ``bin_index`` ``[B]`` long, ``event``
    ``[B]``.  With ``h = sigmoid(logits)`` and ``S_k = prod_{j<=k} (1 - h_j)``:
    an event in bin ``y`` scores ``-log S_{y-1} - log h_y``; a patient
    censored in bin ``y`` scores ``-log S_y`` (survived bin ``y``, as in
    PORPOISE).  Loss ``= (1 - alpha) * (censored + uncensored) + alpha *
    uncensored``, averaged over the batch.  Computed in log space.
    """
    if logits.ndim != 2 or bin_index.shape != logits.shape[:1] or event.shape != logits.shape[:1]:
        raise DataError(f"discrete-time NLL wants logits [B, K], bin_index [B], event [B]; got "
                        f"{tuple(logits.shape)}, {tuple(bin_index.shape)}, {tuple(event.shape)}")
    y = bin_index.long().clamp(0, logits.shape[1] - 1).unsqueeze(1)
    e = event.to(logits.dtype)
    log_h = F.logsigmoid(logits)
    log_surv = torch.cumsum(F.logsigmoid(-logits), dim=1)  # log S_k
    log_surv_pad = F.pad(log_surv, (1, 0))  # log S_{k-1}, S_{-1} = 1
    uncensored = -e * (log_surv_pad.gather(1, y) + log_h.gather(1, y)).squeeze(1)
    censored = -(1 - e) * log_surv.gather(1, y).squeeze(1)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def discrete_survival(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` survival at the end of each bin, ``S_k = prod_{j<=k} sigmoid(-logit_j)``."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1))


def discrete_risk(logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` risk score of a discrete-time model: ``-sum_k S_k`` (higher = worse)."""
    return -discrete_survival(logits).sum(dim=1)


def subtype_ce(logits: torch.Tensor, target: torch.Tensor, *,
               class_weights: torch.Tensor | Sequence[float] | None = None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy, ``logits`` ``[B, C]``, ``target`` ``[B]`` long."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise DataError(f"subtype loss wants logits [B, C] and target [B], got "
                        f"{tuple(logits.shape)} and {tuple(target.shape)}")
    w = None
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if w.shape != (logits.shape[1],):
            raise DataError(f"class_weights must have {logits.shape[1]} entries, got {tuple(w.shape)}")
    return F.cross_entropy(logits, target.long(), weight=w, label_smoothing=label_smoothing)


def balanced_class_weights(labels: Sequence[int], n_classes: int) -> np.ndarray:
    """``n / (C * count_c)`` per class (sklearn's ``"balanced"``), from training labels."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    return np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)


LossFn = Callable[[torch.Tensor, "object"], torch.Tensor]


def build_loss(task: str, *, ties: str = "efron", bins: TimeBins | None = None, alpha: float = 0.4,
               class_weights: Sequence[float] | None = None) -> LossFn:
    """``loss_fn(output, batch) -> scalar`` for ``task`` (see :data:`TASKS`).

    ``survival_discrete`` needs the training fold's ``bins``; the batch's
    ``time_days`` are binned on the fly.
    """
    if task == "survival_cox":
        def cox(output, batch):
            return cox_ph_loss(output, time_days=batch.time_days.to(output.dtype), event=batch.event, ties=ties)
        return cox
    if task == "survival_discrete":
        if bins is None:
            raise DataError("task 'survival_discrete' needs bins=TimeBins.fit(train time_days, event, n_bins)")

        def discrete(output, batch):
            return discrete_time_nll(output, bin_index=bins.transform(batch.time_days), event=batch.event, alpha=alpha)
        return discrete
    if task == "subtype":
        def ce(output, batch):
            return subtype_ce(output, batch.subtype, class_weights=class_weights)
        return ce
    raise UnknownNameError("task", task, TASKS)
