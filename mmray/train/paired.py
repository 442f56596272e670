"""Paired comparison of every model against the best single baseline, fold by fold over all CV repeats.

Fold means hide how often a model actually wins: with 5 x 5-fold CV every
(repeat, fold) is a test set that every model scored, so the differences
``model - baseline`` on the same held-out patients are paired.  Per task the
*baseline* is the best single-modality row of the summary that is not an
ensemble (highest mean headline metric, as the ablation's best single).
For every other (model, modality set) with folds in common:
``n_pairs``, ``mean_diff``, ``sd_diff``, a percentile bootstrap CI of the
mean difference (resampling the folds), the two-sided Wilcoxon signed-rank
p-value (scipy; NaN with fewer than 2 non-zero differences) and ``wins``
(the fraction of folds where the model beat the baseline).

The folds of one repeat overlap in training patients, so the Wilcoxon
p-value is optimistic (folds are not independent); the report says so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mmray.train.evaluate import HEADLINE

COLUMNS = ["task", "model", "modality_set", "metric", "baseline", "n_pairs", "mean", "baseline_mean", "mean_diff",
           "sd_diff", "ci_low", "ci_high", "wilcoxon_p", "wins"]


def best_baseline(summary: pd.DataFrame, task: str) -> pd.Series | None:
    """The best single-modality, non-ensemble row of ``task`` (by mean headline metric), or None."""
    g = summary[(summary["task"] == task) & (summary["n_folds_ok"] > 0)]
    if g.empty:
        return None
    head = f"{HEADLINE[task]}_mean"
    single = g[(g["modalities"].astype(str).str.count(",") == 0) & (g["model"] != "ensemble")]
    pool = single if len(single) else g[g["model"] != "ensemble"]
    pool = pool[pool[head].notna()]
    return pool.loc[pool[head].idxmax()] if len(pool) else None


def paired_stats(diffs: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean, sd, bootstrap CI of the mean, Wilcoxon p and win fraction of paired differences."""
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, float)
    d = d[np.isfinite(d)]
    out = {"n_pairs": int(d.size), "mean_diff": math.nan, "sd_diff": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "wilcoxon_p": math.nan, "wins": math.nan}
    if not d.size:
        return out
    out.update(mean_diff=float(d.mean()), sd_diff=float(d.std(ddof=1)) if d.size > 1 else 0.0,
               wins=float((d > 0).mean()))
    if n_boot > 0 and d.size > 1:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
        out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(means, [0.025, 0.975]))
    if np.count_nonzero(d) >= 2:
        out["wilcoxon_p"] = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return out


def paired_table(results: pd.DataFrame, summary: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every (task, model, modality set) against its task's best single baseline (module doc)."""
    rows = []
    if results.empty or summary.empty:
        return pd.DataFrame(columns=COLUMNS)
    ok = results[results["status"] == "ok"]
    fold_keys = ["repeat", "fold"] if "repeat" in ok.columns else ["fold"]
    for task in dict.fromkeys(summary["task"]):
        base = best_baseline(summary, task)
        if base is None:
            continue
        metric = HEADLINE[task]
        if metric not in ok:
            continue

        def values(model, set_name):
            g = ok[(ok["task"] == task) & (ok["model"] == model) & (ok["modality_set"] == set_name)]
            return g.set_index(fold_keys)[metric].astype(float)

        ref = values(base["model"], base["modality_set"])
        for _, s in summary[summary["task"] == task].iterrows():
            if (s["model"], s["modality_set"]) == (base["model"], base["modality_set"]):
                continue
            v = values(s["model"], s["modality_set"])
            common = v.index.intersection(ref.index)
            stats = paired_stats((v.loc[common] - ref.loc[common]).to_numpy(), n_boot=n_boot, seed=seed)
            rows.append({"task": task, "model": s["model"], "modality_set": s["modality_set"], "metric": metric,
                         "baseline": f"{base['model']}:{base['modality_set']}",
                         "mean": float(v.loc[common].mean()) if len(common) else math.nan,
                         "baseline_mean": float(ref.loc[common].mean()) if len(common) else math.nan, **stats})
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.sort_values(["task", "mean_diff"], ascending=[True, False], kind="stable").reset_index(drop=True)
