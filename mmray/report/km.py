"""Kaplan-Meier curves of predicted risk groups, with the log-rank test (lifelines)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

from mmray.errors import DataError
from mmray.report.render import new_figure


@dataclass(frozen=True)
class RiskGroups:
    """Patients split at quantiles of predicted risk, and the log-rank test between groups."""

    labels: tuple[str, ...]  # e.g. ("low", "high")
    group: np.ndarray  # (n,) group index per patient, 0 = lowest risk
    cutoffs: tuple[float, ...]  # risk thresholds between groups
    logrank_p: float
    logrank_stat: float
    n_per_group: tuple[int, ...]
    events_per_group: tuple[int, ...]


def risk_groups(risk, *, time_days, event, n_groups: int = 2) -> RiskGroups:
    """Split at risk quantiles (median for two groups) and run the multivariate log-rank test.

    ``risk``, ``time_days``, ``event``: shape (n,). Out-of-fold risks should be
    used, so the groups are honest; risks are compared only within one model.
    """
    risk = np.asarray(risk, dtype=float)
    time_days = np.asarray(time_days, dtype=float)
    event = np.asarray(event).astype(bool)
    if not (len(risk) == len(time_days) == len(event)):
        raise DataError(f"risk, time_days and event differ in length: {len(risk)}, {len(time_days)}, {len(event)}")
    keep = np.isfinite(risk) & np.isfinite(time_days)
    if keep.sum() < 2 * n_groups:
        raise DataError(f"need at least {2 * n_groups} patients with a risk and a time, got {int(keep.sum())}")
    risk, time_days, event = risk[keep], time_days[keep], event[keep]
    cutoffs = tuple(float(q) for q in np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1]))
    group = np.searchsorted(np.asarray(cutoffs), risk, side="right")
    labels = ("low", "high") if n_groups == 2 else tuple(f"Q{i + 1}" for i in range(n_groups))
    test = multivariate_logrank_test(time_days, group, event)
    return RiskGroups(labels=labels, group=group, cutoffs=cutoffs, logrank_p=float(test.p_value),
                      logrank_stat=float(test.test_statistic),
                      n_per_group=tuple(int((group == g).sum()) for g in range(n_groups)),
                      events_per_group=tuple(int(event[group == g].sum()) for g in range(n_groups)))


def km_figure(risk, *, time_days, event, title: str, n_groups: int = 2):
    """A matplotlib Figure with one Kaplan-Meier curve per risk group and the log-rank p-value."""
    time_days = np.asarray(time_days, dtype=float)
    event = np.asarray(event).astype(bool)
    groups = risk_groups(risk, time_days=time_days, event=event, n_groups=n_groups)
    keep = np.isfinite(np.asarray(risk, dtype=float)) & np.isfinite(time_days)
    t, e = time_days[keep], event[keep]
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for g, label in enumerate(groups.labels):
        sel = groups.group == g
        kmf = KaplanMeierFitter(label=f"{label} risk (n={sel.sum()}, events={e[sel].sum()})")
        kmf.fit(t[sel], e[sel])
        kmf.plot_survival_function(ax=ax, ci_show=True)
    ax.set_xlabel("days")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nlog-rank p = {groups.logrank_p:.2g}")
    return fig, groups
