"""Report sections: interpretation (modalities, genes, pathways), multi-task heads, GNN component ablation.

Read from the train run's folder (:mod:`mmray.train.run_extras`) and, for a
synthetic cohort, compared with its planted truth
(:mod:`mmray.report.interpret_truth`).
"""

from __future__ import annotations

import html
import io
import posixpath

import pandas as pd

from mmray.report import render
from mmray.report.document import InputMissing, para
from mmray.report.inputs import RESULTS_DIR, TrainRun, _read_bytes
from mmray.report.interpret_truth import enrichment_truth, gene_recovery, load_truth, modality_truth, pathway_truth

KEY = ["task", "model", "modality_set"]
AUX = ("response_accuracy", "response_balanced_accuracy", "response_auc", "toxicity_auroc")


def _table(store, run: TrainRun, name: str) -> pd.DataFrame | None:
    fs, root = store.filesystem
    blob = _read_bytes(fs, posixpath.join(root, RESULTS_DIR, run.name, name))
    if not blob or not blob.strip():
        return None
    return pd.read_parquet(io.BytesIO(blob)) if name.endswith(".parquet") else pd.read_csv(io.BytesIO(blob))


def _pick(frame: pd.DataFrame, run: TrainRun) -> tuple:
    """The (task, model, set) to show first: mm_gnn when interpreted, else the best-scoring interpreted key."""
    keys = frame[KEY].drop_duplicates()
    gnn = keys[keys["model"] == "mm_gnn"]
    if len(gnn):
        return tuple(gnn.iloc[0])
    s = run.summary.merge(keys, on=KEY)
    if len(s):
        head = s["headline"].iloc[0]
        return tuple(s.sort_values(f"{head}_mean", ascending=False).iloc[0][KEY])
    return tuple(keys.iloc[0])


def _of(frame: pd.DataFrame | None, key: tuple) -> pd.DataFrame:
    if frame is None:
        return pd.DataFrame()
    sel = frame
    for k, v in zip(KEY, key):
        sel = sel[sel[k] == v]
    return sel


def interpretation_section(store, run: TrainRun, cohort: str | None = None, *, top_k: int = 50) -> list[str]:
    mod = _table(store, run, "modality_summary.csv")
    ranking = _table(store, run, "gene_ranking.csv")
    if mod is None and ranking is None:
        raise InputMissing(f"train run {run.name} has no interpretation (no fusion model, or interpret.enabled "
                           f"false)", f"mmray train --config ray_jobs/configs/train.yaml --store {store.uri}")
    truth = load_truth(cohort)
    key = _pick(ranking if ranking is not None else mod, run)
    label = f"{key[1]} on {key[2]} ({key[0]})"
    body = [para(f"Interpretation of <b>{html.escape(label)}</b> on its held-out folds"
                 + (" against the cohort's planted truth (truth.json)." if truth else "."))]
    if mod is not None:
        body += _modalities(_of(mod, key), truth)
        others = mod[~mod[KEY].apply(tuple, axis=1).isin([key])]
        if len(others):
            rows = [{"model": f"{m} ({s})", "method": meth, "ranking": ", ".join(g.sort_values("rank")["modality"])}
                    for (t, m, s, meth), g in others.groupby([*KEY, "method"], sort=False)]
            body += ["<h3>Modality rankings of the other interpreted models</h3>",
                     render.table(rows, [("model", "model (set)"), ("method", "method"), ("ranking", "most important first")])]
    if ranking is not None:
        body += _genes(_of(ranking, key), _of(_table(store, run, "gene_stability.csv"), key), truth, top_k=top_k)
        enr = _of(_table(store, run, "enrichment.csv"), key)
        body += _enrichment(enr, truth)
    return body


def _modalities(s: pd.DataFrame, truth: dict | None) -> list[str]:
    if s.empty:
        return []
    wide = s.pivot_table(index="modality", columns="method", values=["mean", "sd", "rank"], aggfunc="first")
    weights = {}
    if truth:
        from mmray.report.interpret_truth import TRUTH_MODALITY

        weights = {TRUTH_MODALITY[k]: v for k, v in (truth.get("model", {}).get("weights") or {}).items()
                   if k in TRUTH_MODALITY}
    rows = []
    for m in wide.index:
        row = {"modality": m, "truth_weight": weights.get(m)}
        for meth in ("masking_drop", "attention"):
            if ("mean", meth) in wide.columns and pd.notna(wide.loc[m, ("mean", meth)]):
                row[meth] = f"{wide.loc[m, ('mean', meth)]:.3f} ± {wide.loc[m, ('sd', meth)]:.3f}"
                row[f"{meth}_rank"] = int(wide.loc[m, ("rank", meth)])
        rows.append(row)
    rows.sort(key=lambda r: r.get("masking_drop_rank", 99))
    cols = [("modality", "modality"), ("masking_drop", "drop in C when masked (mean ± sd)"),
            ("masking_drop_rank", "rank"), ("attention", "cross-attention weight"), ("attention_rank", "rank")]
    if weights:
        cols.append(("truth_weight", "planted log-hazard weight"))
    out = ["<h3>Modality importance</h3>",
           para("Masking drop: how much the held-out C-index falls when the modality is masked for every test "
                "patient (model-agnostic). Attention: the model's own modality weights, averaged over the test "
                "patients that have the modality."),
           render.table(rows, cols)]
    if truth:
        mt = modality_truth(s, truth)
        if mt is not None and len(mt):
            out.append(render.table(mt.to_dict("records"), [("method", "method"), ("ranking", "model's ranking"),
                                                          ("truth_ranking", "planted ranking"),
                                                          ("spearman", "Spearman vs planted weights")]))
            out.append(para("Proteins carry no factor of their own (they show the expression factor); slide "
                            "features come from a randomly initialised encoder in the demo, so the slide factor "
                            "cannot be seen whatever its planted weight."))
    return out


def _genes(r: pd.DataFrame, stab: pd.DataFrame, truth: dict | None, *, top_k: int) -> list[str]:
    if r.empty:
        return []
    out = ["<h3>Gene importance (integrated gradients)</h3>"]
    text = (f"Mean |integrated gradients| of the risk over held-out patients, normalised per fold and averaged "
            f"over folds; {len(r)} genes ranked.")
    if len(stab):
        s = stab.iloc[0]
        text += (f" Cross-fold stability: top-{int(s['top_k'])} overlap {s['top_k_overlap']:.2f}, Spearman "
                 f"over shared genes {s['spearman_shared']:.2f} ({int(s['n_folds'])} folds).")
    planted = set()
    if truth:
        from mmray.report.interpret_truth import planted_survival_genes

        planted = planted_survival_genes(truth)
        rec = gene_recovery(r, truth, top_k=top_k)
        text += (f" Planted survival genes in the top {top_k}: <b>{rec['hits']} of {rec['planted']}</b> "
                 f"(precision@{top_k} {rec['precision_at_k']:.2f}, recall {rec['recall']:.2f}; "
                 f"{rec['planted_seen']} of them were among the genes the model saw, recall of those "
                 f"{rec['recall_of_seen']:.2f}).")
    out.append(para(text))
    top = r.sort_values("rank").head(30).assign(planted=lambda d: d["gene"].isin(planted) if planted else "")
    cols = [("rank", "rank"), ("gene", "gene"), ("importance", "importance"), ("folds_selected", "folds"),
            ("modalities", "from")] + ([("planted", "planted")] if planted else [])
    out.append(render.table(top.to_dict("records"), cols, mark=(lambda row: bool(row["planted"])) if planted else None))
    return out


def _enrichment(e: pd.DataFrame, truth: dict | None) -> list[str]:
    if e.empty:
        return [para("No pathway enrichment: the store holds no gene sets (ingest a cohort with a signatures GMT).")]
    sig = pathway_truth(truth) if truth else {}
    e = e.assign(signal=e["set_name"].map(sig).fillna("") if sig else "")
    text = "Top genes against the cohort's gene sets: hypergeometric test, Benjamini-Hochberg FDR."
    if truth:
        t = enrichment_truth(e, truth)
        text += (f" Planted pathways found at FDR ≤ {t['fdr']}: <b>{', '.join(t['planted_found']) or 'none'}</b> "
                 f"(of {', '.join(t['planted'])}); noise sets at that FDR: <b>{', '.join(t['noise_found']) or 'none'}"
                 f"</b>.")
    cols = [("set_name", "gene set"), ("overlap", "in top genes"), ("in_universe", "ranked members"),
            ("expected", "expected"), ("p_value", "p"), ("fdr", "FDR"), ("genes", "genes")]
    if truth:
        cols.append(("signal", "planted signal"))
    return ["<h3>Pathway enrichment of the top genes</h3>", para(text),
            render.table(e.head(25).to_dict("records"), cols, mark=lambda r: r["fdr"] <= 0.05)]


def multitask_section(run: TrainRun) -> list[str]:
    s = run.summary
    have = [m for m in AUX if f"{m}_mean" in s.columns]
    rows = s[s[[f"{m}_mean" for m in have]].notna().any(axis=1)] if have else s.iloc[0:0]
    if rows.empty:
        raise InputMissing(f"train run {run.name} has no multi-task model", "a models entry with hparams "
                           "{tasks: [survival_cox, response, toxicity]} (e.g. ray_jobs/configs/gnn.yaml)")
    out = [para("One model, one head per task, losses weighted by homoscedastic uncertainty (Kendall et al.). "
                "Response: accuracy, balanced accuracy and one-vs-rest macro AUROC over patients with a known "
                "response; toxicity: macro AUROC over the grade-3+ toxicity labels. Mean ± sd over folds.")]
    recs = []
    for _, r in rows.iterrows():
        rec = {"model": r["model"], "modality_set": r["modality_set"],
               "c": f"{r.get('harrell_c_mean', float('nan')):.3f} ± {r.get('harrell_c_sd', float('nan')):.3f}"}
        rec.update({m: f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_sd']:.3f}" for m in have if pd.notna(r.get(f"{m}_mean"))})
        recs.append(rec)
    out.append(render.table(recs, [("model", "model"), ("modality_set", "modality set"), ("c", "Harrell C")]
                            + [(m, m.replace("_", " ")) for m in have]))
    return out


def gnn_ablation_section(store, run: TrainRun) -> list[str]:
    t = _table(store, run, "gnn_ablation.csv")
    if t is None or t.empty:
        raise InputMissing(f"train run {run.name} has no component ablation", "a models entry with ablation: true "
                           "(ray_jobs/configs/gnn.yaml)")
    cols = [("variant", "variant"), ("component_removed", "component removed"), ("modality_set", "set"),
            ("mean", "C mean"), ("sd", "sd"), ("ci_low", "CI low"), ("ci_high", "CI high"),
            ("delta_vs_full", "vs full")] + [(f"{m}_mean", m.replace("_", " ")) for m in AUX if f"{m}_mean" in t]
    return [para("Each variant removes one component of the full model and is trained on the same folds; a "
                 "negative change means the component helps."), render.table(t.to_dict("records"), cols)]
