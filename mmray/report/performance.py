"""Report sections about the train run: results table, modality ablation, Kaplan-Meier curves of risk groups."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.report import render
from mmray.report.document import InputMissing, figure, para, png_img
from mmray.report.inputs import TrainRun
from mmray.report.km import km_figure, risk_groups
from mmray.train.evaluate import SUBTYPE_METRICS, SURVIVAL_METRICS

KEY = ("task", "model", "modality_set")  # what names one row of a run's summary


def _pm(mean, sd) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None and np.isfinite(sd) else f"{mean:.3f}"


def best_row(summary: pd.DataFrame, *, survival_only: bool = False, where=None) -> pd.Series | None:
    """The summary row with the highest mean headline metric (among folds that finished)."""
    s = summary[summary["n_folds_ok"] > 0]
    if survival_only:
        s = s[s["task"] != "subtype"]
    if where is not None:
        s = s[where(s)]
    if s.empty:
        return None
    scores = [r[f"{r['headline']}_mean"] for _, r in s.iterrows()]
    scores = [v if v is not None and np.isfinite(v) else -math.inf for v in scores]
    return s.iloc[int(np.argmax(scores))]


def _repeats_text(summary: pd.DataFrame) -> str:
    n = int(summary["n_repeats"].max()) if "n_repeats" in summary and len(summary) else 1
    return f" of all {n} CV repeats (folds column: folds x repeats)" if n > 1 else ""


def results_section(run: TrainRun) -> list[str]:
    summary = run.summary
    body = [para(f"Train run <b>{html.escape(run.name)}</b> ({html.escape(str(run.meta.get('created_utc', '')))}), "
                 f"folds {html.escape(str(run.meta.get('folds', '')))}: every model on every modality set, "
                 f"cross-validated on the same saved folds. Cells: mean ± standard deviation over folds"
                 f"{_repeats_text(summary)}; CI: 95% bootstrap interval of the fold mean.")]
    for task, g in summary.groupby("task", sort=False):
        head, best = g["headline"].iloc[0], best_row(g)  # best per task: C-index and AUC do not compare
        pivot = g.pivot_table(index="model", columns="modality_set", values=f"{head}_mean", aggfunc="first",
                              sort=False)
        sds = g.pivot_table(index="model", columns="modality_set", values=f"{head}_sd", aggfunc="first", sort=False)
        grid = [{"model": m, **{s: _pm(pivot.loc[m, s], sds.loc[m, s]) if pd.notna(pivot.loc[m, s]) else ""
                                for s in pivot.columns}} for m in pivot.index]
        body += [f"<h3>{html.escape(task)}: {html.escape(head)} by model and modality set</h3>",
                 render.table(grid, [("model", "model")] + [(s, s) for s in pivot.columns])]
        metrics = SUBTYPE_METRICS if task == "subtype" else SURVIVAL_METRICS
        rows = []
        for _, r in g.iterrows():
            row = {"model": r["model"], "modality_set": r["modality_set"], "modalities": r["modalities"],
                   "folds": f"{int(r['n_folds_ok'])}/{int(r['n_folds'])}", "mean": r.get(f"{head}_mean"),
                   "sd": r.get(f"{head}_sd"), "ci_low": r.get(f"{head}_ci_low"), "ci_high": r.get(f"{head}_ci_high")}
            row.update({m: _pm(r.get(f"{m}_mean"), r.get(f"{m}_sd")) for m in metrics if m != head})
            row["best"] = best is not None and all(r[k] == best[k] for k in KEY)
            rows.append(row)
        cols = [("model", "model"), ("modality_set", "modality set"), ("modalities", "modalities"),
                ("folds", "folds ok"), ("mean", f"{head} mean"), ("sd", f"{head} sd"), ("ci_low", "CI low"),
                ("ci_high", "CI high")] + [(m, m) for m in metrics if m != head]
        body.append(render.table(rows, cols, mark=lambda r: r["best"]))
        if best is not None:
            body.append(para(f"Best: <b>{html.escape(best['model'])}</b> on <b>{html.escape(best['modality_set'])}"
                             f"</b> ({html.escape(head)} {best[head + '_mean']:.3f}), highlighted."))
    notes = run.meta.get("notes") or []
    if notes:
        body.append("<p>Notes of the run:</p><ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
                    + "</ul>")
    return body


def registered_section(models: list) -> list[str]:
    """Registered (non-signature) models holding the serving alias."""
    if not models:
        return [para("No tuned model is registered yet (<code>mmray tune</code> and the pipeline's register "
                     "stage register the tuned best model as <code>mmray__&lt;model&gt;</code>).")]
    rows = [{"name": m.name, "version": m.version, "features": len(m.features),
             "metrics": ", ".join(f"{k}={v:.3f}" for k, v in sorted(m.metrics.items())
                                  if isinstance(v, (int, float)) and ("mean" in k or "score" in k))}
            for m in models]
    return [render.table(rows, [("name", "registered model"), ("version", "version"), ("features", "features"),
                                ("metrics", "cross-validated metrics")])]


def ablation_section(run: TrainRun) -> list[str]:
    if run.ablation is None or run.ablation.empty:
        raise InputMissing(f"train run {run.name} has no ablation table (no finished fit)", _retrain(run))
    if run.ablation_png is None:  # older runs: draw it from the table
        from mmray.train.ablation import ablation_png

        run.ablation_png = ablation_png(run.ablation)
    t = run.ablation
    fusion = t[t["kind"] == "fusion"]
    wins = fusion[fusion["beats_best_single"].astype(bool)]
    text = (f"{len(wins)} of {len(fusion)} fusion row(s) beat the best single modality "
            f"({html.escape(', '.join(t['best_single'].dropna().astype(str).unique()))})." if len(fusion)
            else "Only single-modality models were trained: nothing to compare fusion with.")
    cols = [("task", "task"), ("kind", "kind"), ("model", "model"), ("modality_set", "modality set"),
            ("metric", "metric"), ("mean", "mean"), ("sd", "sd"), ("delta", "vs best single"),
            ("beats_best_single", "beats best single")]
    chart = (f"<figure>{png_img(run.ablation_png, alt='modality ablation chart')}<figcaption>Mean ± sd over "
             f"folds; grey: single modality, blue: fusion, green: fusion that beats the best single modality "
             f"(dashed line).</figcaption></figure>")
    return [para(text), chart,
            render.table(t.to_dict("records"), cols, mark=lambda r: bool(r.get("beats_best_single"))),
            *ct_section(t)]


def ct_section(table) -> list[str]:
    """Radiomics vs the deep CT embedding (ct_deep) vs both, when the run trained on those sets."""
    from mmray.train.ablation import ct_comparison

    ct = ct_comparison(table)
    if ct.empty:
        return []
    lines = []
    for task, g in ct.groupby("task", sort=False):
        best = {f: g.loc[g["features"] == f, "mean"].max() for f in ("radiomics", "ct_deep", "radiomics + ct_deep")}
        parts = [f"{html.escape(f)} <b>{v:.3f}</b>" for f, v in best.items() if np.isfinite(v)]
        lines.append(f"{html.escape(task)}: best {g['metric'].iloc[0]} of " + ", ".join(parts) + ".")
    cols = [("task", "task"), ("features", "CT features"), ("model", "model"), ("modality_set", "modality set"),
            ("metric", "metric"), ("mean", "mean"), ("sd", "sd"), ("ci_low", "CI low"), ("ci_high", "CI high"),
            ("delta_vs_radiomics", "vs best radiomics")]
    return ["<h3>CT: radiomics vs deep features (ct_deep) vs both</h3>",
            para("Hand-crafted pyradiomics features of the tumour mask against the 3D CNN embedding of the "
                 "tumour-centred crop (ct_embedding), and both together, on the same folds. " + " ".join(lines)),
            render.table(ct.to_dict("records"), cols,
                         mark=lambda r: r["features"] != "radiomics" and r["delta_vs_radiomics"] >= 0)]


def fold_ranked_risk(pred: pd.DataFrame) -> np.ndarray:
    """Each patient's risk as a percentile within its own test fold.

    Every fold has its own model, and a Cox model's risk has an arbitrary
    offset, so raw out-of-fold risks of different folds are not comparable;
    percentiles within the fold are.
    """
    return pred.groupby("fold")["risk"].rank(pct=True).to_numpy(float)


def km_section(run: TrainRun) -> list[str]:
    summary = run.summary
    best = best_row(summary, survival_only=True)
    if best is None:
        raise InputMissing(f"train run {run.name} has no survival model with a finished fold",
                           _retrain(run, "tasks=[survival_cox]"))
    preds = run.predictions
    if preds.empty or "risk" not in preds:
        raise InputMissing(f"train run {run.name} saved no out-of-fold risks (predictions.parquet)", _retrain(run))
    sel = _preds_of(preds, best)
    fig, groups = km_figure(fold_ranked_risk(sel), time_days=sel["time_days"].to_numpy(float),
                            event=sel["event"].to_numpy(), title=f"{best['model']} on {best['modality_set']}")
    body = [para(f"Out-of-fold predicted risk of the best survival model, <b>{html.escape(best['model'])}</b> on "
                 f"<b>{html.escape(best['modality_set'])}</b>, split at the median into low- and high-risk groups "
                 f"(risks ranked within each test fold). Log-rank p = <b>{groups.logrank_p:.3g}</b> "
                 f"(n = {sum(groups.n_per_group)}, events {groups.events_per_group[0]} low / "
                 f"{groups.events_per_group[1]} high)."),
            figure(fig, alt="Kaplan-Meier curves by predicted risk group",
                   attrs={"model": best["model"], "modality-set": best["modality_set"],
                          "logrank-p": repr(groups.logrank_p), "n": sum(groups.n_per_group)})]
    rows = []
    for _, r in summary[(summary["task"] != "subtype") & (summary["n_folds_ok"] > 0)].iterrows():
        p = _preds_of(preds, r)
        try:
            g = risk_groups(fold_ranked_risk(p), time_days=p["time_days"].to_numpy(float), event=p["event"].to_numpy())
            p_value, n = f"{g.logrank_p:.3g}", sum(g.n_per_group)
        except DataError as e:  # too few patients for two groups: say so in the row
            p_value, n = str(e), len(p)
        rows.append({"task": r["task"], "model": r["model"], "modality_set": r["modality_set"], "n": n,
                     "logrank_p": p_value, "best": all(r[k] == best[k] for k in KEY)})
    body += ["<h3>Log-rank test of the median split, every survival model</h3>",
             render.table(rows, [("task", "task"), ("model", "model"), ("modality_set", "modality set"),
                                 ("n", "patients"), ("logrank_p", "log-rank p")], mark=lambda r: r["best"])]
    return body


def of_row(frame: pd.DataFrame, row) -> pd.DataFrame:
    """The rows of a run file (predictions, importances, attention) for one summary row's task, model and set."""
    if frame is None or frame.empty:
        return frame
    keep = np.ones(len(frame), bool)
    for k in KEY:
        keep &= (frame[k] == row[k]).to_numpy()
    return frame[keep]


def _preds_of(preds: pd.DataFrame, row) -> pd.DataFrame:
    sel = of_row(preds, row)
    if "repeat" in sel and len(sel):  # repeated CV: one out-of-fold risk per patient, from the first repeat
        sel = sel[sel["repeat"] == sel["repeat"].min()]
    return sel[np.isfinite(sel["risk"].to_numpy(float)) & np.isfinite(sel["time_days"].to_numpy(float))]


def _retrain(run: TrainRun, extra: str = "") -> str:
    return (f"mmray train --config ray_jobs/configs/train.yaml --store {run.meta.get('store', 'STORE')}"
            + (f" {extra}" if extra else ""))
