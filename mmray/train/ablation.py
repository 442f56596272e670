"""Modality ablation: every fusion model against the best single-modality model, as a table and a bar chart.

A row of the CV summary is *single* when its modality set has one modality
(any model: the ``single`` MLP or HEEC on that modality) and *fusion* when it
has more.  Per task, the best single row is the one with the highest mean
headline metric (Harrell's C for survival, macro AUC for subtype); every row
gets ``delta`` (its mean minus the best single mean) and ``beats_best_single``.

Columns: ``task, kind, model, modality_set, modalities, metric, mean, sd,
ci_low, ci_high, n_folds_ok, delta, beats_best_single, best_single``; the
numbers are the summary's, unchanged.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

COLUMNS = ["task", "kind", "model", "modality_set", "modalities", "metric", "mean", "sd", "ci_low", "ci_high",
           "n_folds_ok", "delta", "beats_best_single", "best_single"]


def ablation_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task, g in summary.groupby("task", sort=False):
        head = g["headline"].iloc[0]
        g = g[g["n_folds_ok"] > 0]
        if g.empty:
            continue
        kind = np.where(g["modalities"].astype(str).str.count(",") == 0, "single", "fusion")
        singles = g[kind == "single"]
        best = singles.loc[singles[f"{head}_mean"].idxmax()] if len(singles) else None
        best_mean = float(best[f"{head}_mean"]) if best is not None else np.nan
        best_label = f"{best['model']}:{best['modality_set']}" if best is not None else ""
        for (_, r), k in zip(g.iterrows(), kind):
            mean = float(r[f"{head}_mean"])
            rows.append({"task": task, "kind": k, "model": r["model"], "modality_set": r["modality_set"],
                         "modalities": r["modalities"], "metric": head, "mean": mean, "sd": float(r[f"{head}_sd"]),
                         "ci_low": float(r.get(f"{head}_ci_low", np.nan)),
                         "ci_high": float(r.get(f"{head}_ci_high", np.nan)), "n_folds_ok": int(r["n_folds_ok"]),
                         "delta": mean - best_mean, "beats_best_single": bool(k == "fusion" and mean > best_mean),
                         "best_single": best_label})
    out = pd.DataFrame(rows, columns=COLUMNS)
    if out.empty:
        return out
    out["_order"] = (out["kind"] == "fusion").astype(int)
    return (out.sort_values(["task", "_order", "mean"], ascending=[True, True, False], kind="stable")
               .drop(columns="_order").reset_index(drop=True))


def ablation_png(table: pd.DataFrame, *, title: str = "Modality ablation") -> bytes:
    """Bar chart (mean ± sd over folds) per task, fusion vs single, the best single as a dashed line; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(table["task"])) or ["(no results)"]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 0.55 * max(1, len(table)) + 2), 3.6 * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        g = table[table["task"] == task]
        if g.empty:
            ax.set_axis_off()
            continue
        labels = [f"{m}\n{s}" for m, s in zip(g["model"], g["modality_set"])]
        colors = ["#9e9e9e" if k == "single" else ("#2e7d32" if b else "#1565c0")
                  for k, b in zip(g["kind"], g["beats_best_single"])]
        x = np.arange(len(g))
        ax.bar(x, g["mean"], yerr=g["sd"].fillna(0.0), color=colors, capsize=3, edgecolor="black", linewidth=0.5)
        best = g[g["kind"] == "single"]["mean"].max()
        if np.isfinite(best):
            ax.axhline(best, color="#c62828", linestyle="--", linewidth=1, label=f"best single ({best:.3f})")
            ax.legend(loc="upper left", fontsize=8)
        base = 0.5
        lo = min(base, float((g["mean"] - g["sd"].fillna(0)).min())) - 0.02
        hi = float((g["mean"] + g["sd"].fillna(0)).max()) + 0.02
        ax.set_ylim(max(0.0, lo), min(1.0, hi))
        ax.set_xticks(x, labels, fontsize=7, rotation=45, ha="right")
        ax.set_ylabel(f"{g['metric'].iloc[0]} (mean ± sd over folds)")
        ax.set_title(f"{title}: {task}", fontsize=10)
        ax.axhline(0.5, color="black", linewidth=0.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# The CT comparison: hand-crafted radiomics against the learned crop embedding against both together.
CT_VARIANTS = {frozenset({"radiomics"}): "radiomics", frozenset({"ct_deep"}): "ct_deep",
               frozenset({"radiomics", "ct_deep"}): "radiomics + ct_deep"}
CT_COLUMNS = ["task", "features", "model", "modality_set", "metric", "mean", "sd", "ci_low", "ci_high", "n_folds_ok",
              "delta_vs_radiomics"]


def ct_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of an :func:`ablation_table` on exactly radiomics, ct_deep, or both, per task, best first within each.

    ``delta_vs_radiomics``: the row's mean minus the best radiomics-only mean of its task (NaN without one).
    """
    if table.empty:
        return pd.DataFrame(columns=CT_COLUMNS)
    variant = table["modalities"].astype(str).map(lambda s: CT_VARIANTS.get(frozenset(s.split(","))))
    t = table[variant.notna()].assign(features=variant[variant.notna()])
    rows = []
    for task, g in t.groupby("task", sort=False):
        rad = g.loc[g["features"] == "radiomics", "mean"]
        base = float(rad.max()) if len(rad) else np.nan
        for _, r in g.iterrows():
            rows.append({**{c: r[c] for c in CT_COLUMNS if c in r.index}, "delta_vs_radiomics": r["mean"] - base})
    out = pd.DataFrame(rows, columns=CT_COLUMNS)
    order = {v: i for i, v in enumerate(CT_VARIANTS.values())}
    return (out.assign(_v=out["features"].map(order)).sort_values(["task", "_v", "mean"], ascending=[True, True, False],
                                                                     kind="stable")
               .drop(columns="_v").reset_index(drop=True))
