"""Federated preprocessing: the fold-fitted :class:`~mmray.train.preprocess.Preprocessor`, from site statistics.

Centralised training fits imputation medians, the variance filter, label
screening and scaling on the pooled training rows.  Here every site keeps
its rows; it answers questions whose answers are per-column aggregates, and
the coordinator assembles a :class:`Preprocessor` whose fitted blocks are
those a pooled fit would give:

1. **schema**: each site's column names and, for text columns, the count of
   each level (one-hot levels are the union; a column with too many levels
   is an identifier and dropped, as :mod:`mmray.train.preprocess` does);
2. **moments** (count, mean, sum of squared deviations per column, combined
   with Chan et al.'s parallel formula) of the encoded values;
3. **medians** by federated bisection: each site counts, per column, its
   values at or below ``K`` thresholds; the coordinator narrows each
   column's bracket to the order statistics that make the median (both
   middle ones for an even count, as ``numpy.nanmedian``).  The starting
   bracket ``mean +- sd * sqrt(n)`` holds every value, so no site ever sends
   a minimum or maximum;
4. moments of the imputed values -> variance top-k and the scaler (exactly
   the pooled ``VarianceTopK`` / ``StandardScalerByGene``);
5. **screening**: the Cox score test stratified by site (each site sends the
   score ``U`` and information ``I`` per kept column; risk sets never span
   sites).  This is the one step that differs from a pooled fit, whose
   risk sets mix sites.  ANOVA screening (subtype) is not federated.

The discrete-time bins (:class:`~mmray.models.losses.TimeBins`) come from the
same order-statistic search over the event times: ``numpy.quantile``'s
linear interpolation between the two order statistics around each quantile.

Site-side helpers (``site_*``) are plain functions of a site's own frame;
the coordinator talks to sites through ``ask(method, **kwargs) -> [answer
per site]`` (Ray actors in :mod:`mmray.train.federated_site`, or objects in a
test).  Plain numpy; no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mmray.errors import DataError
from mmray.features.clinical import FoldImputer
from mmray.features.selection import CorrelationFilter, StandardScalerByGene, VarianceTopK, cox_score_parts
from mmray.models.losses import TimeBins
from mmray.train.preprocess import MAX_LEVEL_FRACTION, ModalityLayout, Preprocessor, _Block

Ask = Callable[..., list]
K_THRESHOLDS = 128  # thresholds per column per bisection round: the bracket shrinks 128x a round
MAX_ROUNDS = 10  # 128**10 > 2**70: past float64 resolution of any bracket


# ------------------------------------------------------------------ site side
def site_schema(frame: pd.DataFrame, layout: ModalityLayout, modalities: Sequence[str]) -> dict:
    """Per modality: column names, level counts of text columns, rows having it (names and counts only)."""
    out = {}
    for m in modalities:
        cols = layout.columns(frame, m)
        rows = layout.present(frame, m)
        sub = frame.loc[rows, cols]
        text = {c: {str(k): int(v) for k, v in sub[c].dropna().astype(str).value_counts().items()}
                for c in cols if not (pd.api.types.is_numeric_dtype(sub[c]) or pd.api.types.is_bool_dtype(sub[c]))}
        out[m] = {"columns": list(cols), "text": text, "n": int(rows.sum())}
    return out


def skeleton(columns: Sequence[str], levels: dict, dropped: Sequence[str], *, task: str) -> _Block:
    """A :class:`_Block` that can encode (``_encode(fitting=False)``) before anything is fitted."""
    b = _Block(list(columns), top_k_var=None, screen=None, task=task)
    b.levels_, b.dropped_ = dict(levels), list(dropped)
    return b


def site_encode(frame: pd.DataFrame, block: _Block, rows: np.ndarray) -> np.ndarray:
    """``[n_rows_with_modality, d]`` encoded values (NaN kept); a column this site lacks is all NaN."""
    sub = frame.loc[rows].reindex(columns=block.columns)
    return block._encode(sub, fitting=False).to_numpy(dtype=np.float64)


def site_moments(X: np.ndarray) -> dict:
    """Per column: non-missing count, mean, and sum of squared deviations (``M2``)."""
    ok = np.isfinite(X)
    n = ok.sum(axis=0).astype(np.float64)
    with np.errstate(all="ignore"):
        mean = np.where(n > 0, np.where(ok, X, 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)
        m2 = np.where(ok, (X - mean) ** 2, 0.0).sum(axis=0)
    return {"n": n, "mean": mean, "m2": m2}


def site_counts_le(X: np.ndarray, thresholds: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``[r, K]``: how many non-missing values of column ``columns[i]`` are <= ``thresholds[i, k]``."""
    out = np.zeros(thresholds.shape, dtype=np.int64)
    cache: dict[int, np.ndarray] = {}
    for i, j in enumerate(np.asarray(columns, dtype=np.int64)):
        col = cache.get(j)
        if col is None:
            col = cache[j] = np.sort(X[np.isfinite(X[:, j]), j])
        out[i] = np.searchsorted(col, thresholds[i], side="right")
    return out


def site_cox_parts(X: np.ndarray, time: np.ndarray, event: np.ndarray, *, mean: np.ndarray,
                   scale: np.ndarray) -> dict:
    """``U`` and ``I`` of the score test on this site's rows, columns on the pooled scale."""
    U, info = cox_score_parts((X - mean) / scale, np.asarray(time, float), np.asarray(event, bool))
    return {"u": U, "i": info}


# ------------------------------------------------------------------ coordinator side
def combine_moments(parts: Sequence[dict]) -> dict:
    """Pooled ``n, mean, m2`` (Chan et al.) from per-site moments."""
    n = np.sum([p["n"] for p in parts], axis=0).astype(np.float64)
    with np.errstate(all="ignore"):
        mean = np.where(n > 0, np.sum([p["n"] * p["mean"] for p in parts], axis=0) / np.maximum(n, 1), 0.0)
        m2 = np.sum([p["m2"] + p["n"] * (p["mean"] - mean) ** 2 for p in parts], axis=0)
    return {"n": n, "mean": mean, "m2": m2}


def order_stats(count_le: Callable[[np.ndarray], np.ndarray], ranks: np.ndarray, *, lo: np.ndarray,
                hi: np.ndarray) -> np.ndarray:
    """The ``ranks[j]``-th smallest value (1-based) of column j, searched with pooled counts.

    ``count_le(thresholds [d, K]) -> [d, K]`` pooled counts of values <=
    each threshold; ``(lo, hi]`` must hold the value.  Returns the smallest
    ``t`` with ``count(<= t) >= rank`` to float64 resolution.
    """
    lo, hi = np.asarray(lo, float).copy(), np.asarray(hi, float).copy()
    ranks = np.asarray(ranks, float)
    frac = np.arange(1, K_THRESHOLDS + 1) / K_THRESHOLDS
    for _ in range(MAX_ROUNDS):
        width = hi - lo
        if np.all(width <= np.maximum(np.abs(hi), 1.0) * 1e-13):
            break
        th = lo[:, None] + width[:, None] * frac[None, :]
        th[:, -1] = hi
        counts = count_le(th)
        ok = counts >= ranks[:, None]  # monotone in k; the last threshold (hi) always satisfies it
        first = ok.argmax(axis=1)
        new_hi = th[np.arange(len(hi)), first]
        new_lo = np.where(first > 0, th[np.arange(len(hi)), np.maximum(first - 1, 0)], lo)
        lo, hi = new_lo, new_hi
    return hi


def _bracket(pooled: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi]`` holding every value: ``|x - mean| <= sd * sqrt(n)`` for any of n values."""
    n = np.maximum(pooled["n"], 1)
    reach = np.sqrt(pooled["m2"] / n) * np.sqrt(n) + np.maximum(np.abs(pooled["mean"]), 1.0) * 1e-9 + 1e-12
    return pooled["mean"] - 2 * reach, pooled["mean"] + 2 * reach


def pooled_quantiles(count_le, pooled: dict, qs: Sequence[float]) -> np.ndarray:
    """``[d, len(qs)]``: ``numpy.quantile`` (linear) of each column from counts and moments alone."""
    n = pooled["n"].astype(np.int64)
    lo, hi = _bracket(pooled)
    d = len(n)
    pos = np.array([[(max(k, 1) - 1) * q for q in qs] for k in n])  # 0-based fractional position
    below = np.floor(pos).astype(np.int64)
    ranks_lo = below + 1
    ranks_hi = np.minimum(below + 2, np.maximum(n, 1)[:, None])
    R = len(qs)
    rank_all = np.concatenate([ranks_lo, ranks_hi], axis=1).reshape(-1)
    rep = np.repeat(np.arange(d), 2 * R)
    vals = order_stats(lambda th: count_le(th, rep), rank_all, lo=lo[rep], hi=hi[rep]).reshape(d, 2 * R)
    v_lo, v_hi = vals[:, :R], vals[:, R:]
    out = v_lo + (pos - below) * (v_hi - v_lo)
    return np.where(n[:, None] > 0, out, np.nan)


class FederatedPreprocessing:
    """Fit a :class:`Preprocessor` over sites (module doc) through ``ask``.

    ``ask(method, **kwargs)`` calls ``method`` on every site with the same
    keywords and returns their answers (a list).  Every step asks about all
    modalities at once (a handful of calls per fit).  Site methods used:
    ``prep_schema(modalities)``, ``prep_moments(blocks, impute)``,
    ``prep_counts(blocks, thresholds, columns)`` (``columns`` index the
    modalities' encoded columns one after the other),
    ``prep_cox(blocks, support, mean, scale)`` and, for the time bins,
    ``time_moments()`` / ``time_counts(which, thresholds)``.
    """

    def __init__(self, ask: Ask, *, task: str, modalities: Sequence[str], layout: ModalityLayout | None = None,
                 top_k_var: dict | None = None, screen: dict | None = None):
        self.ask, self.task, self.modalities = ask, task, tuple(modalities)
        self.layout = layout or ModalityLayout()
        self.top_k_var = dict(top_k_var or {})
        self.screen = dict(screen or {})
        self.table_columns: list[str] = []

    def fit(self) -> Preprocessor:
        if self.task == "subtype":
            raise DataError("federated training supports survival tasks (survival_discrete, survival_cox); "
                            "ANOVA screening of subtype labels is not federated")
        answers = self.ask("prep_schema", modalities=self.modalities)
        blocks, names, n_rows = {}, {}, {}
        for m in self.modalities:
            blocks[m], names[m], n_rows[m] = self._skeleton(m, [a["modalities"][m] for a in answers])
        # medians of the raw encoded values (NaN skipped): one search over every modality's columns
        parts = self.ask("prep_moments", blocks=blocks, impute=None)
        raw = {m: combine_moments([p[m] for p in parts]) for m in self.modalities}
        pooled = {k: np.concatenate([raw[m][k] for m in self.modalities]) for k in ("n", "mean", "m2")}

        def count_le(th, rows):
            return np.sum(self.ask("prep_counts", blocks=blocks, thresholds=th, columns=rows), axis=0)
        med_all = np.nan_to_num(pooled_quantiles(count_le, pooled, [0.5])[:, 0], nan=0.0)
        offsets = np.cumsum([0] + [len(names[m]) for m in self.modalities])
        impute = {}
        for i, m in enumerate(self.modalities):
            med = med_all[offsets[i]:offsets[i + 1]]
            imp = FoldImputer("median")
            imp.statistics_, imp.n_features_in_, imp.fit_index_ = med, len(names[m]), None
            blocks[m].imputer_ = imp
            impute[m] = med
        parts = self.ask("prep_moments", blocks=blocks, impute=impute)
        moments = {m: combine_moments([p[m] for p in parts]) for m in self.modalities}
        support, var = {}, {}
        for m in self.modalities:
            n = np.maximum(moments[m]["n"], 1)
            var[m] = moments[m]["m2"] / n
            support[m] = self._variance_filter(blocks[m], names[m], var[m], n_rows[m])
        screened = [m for m in self.modalities if blocks[m].screen]
        for m in self.modalities:
            blocks[m].filter_ = None
        if screened:
            mean = {m: moments[m]["mean"][support[m]] for m in screened}
            scale = {m: np.where(var[m][support[m]] > 0, np.sqrt(var[m][support[m]]), 1.0) for m in screened}
            parts = self.ask("prep_cox", blocks={m: blocks[m] for m in screened},
                             support={m: support[m] for m in screened}, mean=mean, scale=scale)
            for m in screened:
                U = np.sum([p[m]["u"] for p in parts], axis=0)
                info = np.sum([p[m]["i"] for p in parts], axis=0)
                with np.errstate(all="ignore"):
                    z = np.where(info > 0, U / np.sqrt(info), 0.0)
                kw = {k: (int(v) if k == "top_k" and v is not None else v) for k, v in dict(blocks[m].screen).items()}
                blocks[m].filter_ = CorrelationFilter("cox", **kw).fit_scores(
                    np.abs(z), 2 * stats.norm.sf(np.abs(z)), feature_names=[names[m][i] for i in support[m]])
                support[m] = support[m][blocks[m].filter_.support_indices_]
        for m in self.modalities:
            self._scaler(blocks[m], names[m], support[m], moments[m]["mean"], var[m], n_rows[m])
        pre = Preprocessor(self.layout, task=self.task, modalities=self.modalities, top_k_var=self.top_k_var,
                           screen=self.screen)
        pre.blocks_, pre.modalities_ = blocks, self.modalities
        self.table_columns = list(dict.fromkeys(c for a in answers for c in a["table_columns"]))
        return pre

    def _skeleton(self, m: str, schemas: list[dict]) -> tuple[_Block, list[str], int]:
        columns = list(dict.fromkeys(c for s in schemas for c in s["columns"]))
        n_rows = sum(s["n"] for s in schemas)
        if not columns:
            raise DataError(f"modality {m!r}: no site has columns for it")
        if n_rows == 0:
            raise DataError(f"modality {m!r}: no training row at any site has it; leave it out of modalities")
        text: dict[str, dict[str, int]] = {}
        for s in schemas:
            for c, lev in s["text"].items():
                acc = text.setdefault(c, {})
                for k, v in lev.items():
                    acc[k] = acc.get(k, 0) + v
        levels = {c: sorted(lev) for c, lev in text.items()}
        cap = max(10, MAX_LEVEL_FRACTION * n_rows)
        dropped = [c for c, lev in levels.items() if len(lev) > cap or len(lev) < 2]
        levels = {c: lev for c, lev in levels.items() if c not in dropped}
        block = skeleton(columns, levels, dropped, task=self.task)
        block.top_k_var, block.screen = self.top_k_var.get(m), self.screen.get(m)
        names = list(block._encode(pd.DataFrame(columns=columns), fitting=False).columns)
        return block, names, n_rows

    @staticmethod
    def _variance_filter(block: _Block, names: list[str], var: np.ndarray, n_rows: int) -> np.ndarray:
        block.var_ = None
        if not block.top_k_var:
            return np.arange(len(names))
        vt = VarianceTopK(int(block.top_k_var))
        vt.n_features_in_, vt.n_samples_seen_, vt.fit_index_ = len(names), int(n_rows), None
        vt.feature_names_in_ = np.asarray(names, dtype=object)
        vt.variances_ = var
        vt.support_indices_ = np.sort(np.argsort(-var, kind="stable")[: min(vt.k, len(names))])
        block.var_ = vt
        return vt.support_indices_

    @staticmethod
    def _scaler(block: _Block, names: list[str], support: np.ndarray, mean: np.ndarray, var: np.ndarray,
                n_rows: int) -> None:
        sc = StandardScalerByGene()
        sc.n_features_in_, sc.n_samples_seen_, sc.fit_index_ = len(support), int(n_rows), None
        sc.feature_names_in_ = np.asarray([names[i] for i in support], dtype=object)
        sd = np.sqrt(var[support])
        sc.mean_, sc.scale_ = mean[support], np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        block.scaler_ = sc
        block.feature_names_ = [names[i] for i in support]

    def time_bins(self, n_bins: int) -> TimeBins:
        """:meth:`TimeBins.fit` over every site's training rows (event-time quantiles, longest follow-up)."""
        if n_bins < 2:
            raise DataError(f"n_bins must be >= 2, got {n_bins}")
        parts = self.ask("time_moments")
        pooled = combine_moments([p for p in parts])  # column 0: event times, column 1: every time
        if pooled["n"][0] < 1:
            raise DataError("no site has an event among its training rows: the time bins cannot be placed")
        qs = list(np.linspace(0, 1, n_bins + 1)[1:-1]) + [1.0]

        def count_le(th, rows):
            return np.sum(self.ask("time_counts", thresholds=th, columns=rows), axis=0)
        q = pooled_quantiles(count_le, pooled, qs)
        cuts = np.unique(q[0, :-1])
        return TimeBins(cuts_days=tuple(float(c) for c in cuts), max_days=float(q[1, -1]))
