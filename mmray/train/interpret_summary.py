"""Interpretation over the folds of a run: gene ranking, its stability, pathway enrichment, modality importance.

Inputs are the per-fold tables of :mod:`mmray.train.interpret` with the run
keys (``task, model, modality_set, repeat``).  Per key:

* ``gene_ranking``: per gene (a gene's expression, mutation, CNV and protein
  columns summed), the importance of each fold normalised to sum to 1 over
  the fold's genes, averaged over the folds (a gene a fold's screen did not
  keep counts 0 there); ranked.
* ``stability``: the mean over pairs of folds of the overlap of their top-k
  genes (``|A & B| / k``) and the mean Spearman correlation of the
  importances of the genes two folds share.
* ``enrichment``: the top-k genes against the store's gene sets
  (:func:`mmray.features.enrichment.enrich`; universe = every gene any fold
  ranked).
* ``modality_summary``: mean and sd over folds of each modality's masking
  drop and attention weight, and its rank by each.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from mmray.features.enrichment import enrich

KEYS = ["task", "model", "modality_set", "repeat"]


def _keys(frame: pd.DataFrame) -> list[str]:
    return [k for k in KEYS if k in frame.columns]


def per_fold_gene_importance(gene_imp: pd.DataFrame) -> pd.DataFrame:
    """``fold, gene, importance`` (columns of one gene summed, normalised to sum 1 per fold)."""
    g = gene_imp.groupby(["fold", "gene"], as_index=False)["importance"].sum()
    g["importance"] = g["importance"] / g.groupby("fold")["importance"].transform("sum").replace(0, np.nan)
    return g.fillna({"importance": 0.0})


def gene_ranking(gene_imp: pd.DataFrame) -> pd.DataFrame:
    """Genes of one (task, model, set, repeat) ranked by mean normalised importance over folds."""
    g = per_fold_gene_importance(gene_imp)
    n_folds = g["fold"].nunique()
    wide = g.pivot(index="gene", columns="fold", values="importance").fillna(0.0)
    mods = gene_imp.groupby("gene")["modality"].agg(lambda s: ",".join(sorted(set(s))))
    out = pd.DataFrame({"gene": wide.index, "importance": wide.mean(1).to_numpy(),
                        "importance_sd": wide.std(1, ddof=1).fillna(0).to_numpy() if n_folds > 1 else 0.0,
                        "folds_selected": (wide > 0).sum(1).to_numpy(), "modalities": mods.reindex(wide.index).to_numpy()})
    out = out.sort_values(["importance", "gene"], ascending=[False, True]).reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out


def stability(gene_imp: pd.DataFrame, *, top_k: int = 50) -> dict:
    """Cross-fold rank overlap of the top-k genes and Spearman correlation over shared genes."""
    g = per_fold_gene_importance(gene_imp)
    folds = sorted(g["fold"].unique())
    tops, vecs = {}, {}
    for f in folds:
        s = g[g["fold"] == f].sort_values("importance", ascending=False)
        tops[f] = set(s["gene"].head(top_k))
        vecs[f] = s.set_index("gene")["importance"]
    overlaps, rhos = [], []
    for a, b in itertools.combinations(folds, 2):
        k = min(top_k, len(tops[a]), len(tops[b]))
        if k:
            overlaps.append(len(tops[a] & tops[b]) / k)
        shared = vecs[a].index.intersection(vecs[b].index)
        if len(shared) >= 3:
            rhos.append(float(stats.spearmanr(vecs[a][shared], vecs[b][shared]).statistic))
    return {"n_folds": len(folds), "top_k": top_k,
            "top_k_overlap": float(np.mean(overlaps)) if overlaps else float("nan"),
            "spearman_shared": float(np.nanmean(rhos)) if rhos else float("nan")}


def modality_summary(mod_imp: pd.DataFrame) -> pd.DataFrame:
    """Per (keys, method, modality): mean, sd over folds and rank within (keys, method)."""
    keys = _keys(mod_imp)
    s = (mod_imp.groupby(keys + ["method", "modality"], as_index=False)["value"]
         .agg(mean="mean", sd="std", n_folds="count"))
    s["rank"] = s.groupby(keys + ["method"])["mean"].rank(ascending=False, method="first").astype(int)
    return s.sort_values(keys + ["method", "rank"]).reset_index(drop=True)


def summarize_interpretation(tables: dict[str, pd.DataFrame], *, gene_sets: dict[str, set] | None,
                             top_k: int = 50) -> dict[str, pd.DataFrame]:
    """``gene_ranking``, ``gene_stability``, ``enrichment`` and ``modality_summary`` tables (module doc)."""
    out: dict[str, pd.DataFrame] = {}
    gi = tables.get("gene_importance")
    if gi is not None and len(gi):
        ranks, stab, enr = [], [], []
        for key, g in gi.groupby(_keys(gi), sort=False):
            labels = dict(zip(_keys(gi), key))
            r = gene_ranking(g)
            ranks.append(r.assign(**labels))
            stab.append({**labels, **stability(g, top_k=top_k)})
            if gene_sets:
                e = enrich(r["gene"].head(top_k), r["gene"], gene_sets)
                enr.append(e.assign(**labels, top_k=top_k))
        out["gene_ranking"] = pd.concat(ranks, ignore_index=True)
        out["gene_stability"] = pd.DataFrame(stab)
        if enr:
            out["enrichment"] = pd.concat(enr, ignore_index=True)
    mi = tables.get("modality_importance")
    if mi is not None and len(mi):
        out["modality_summary"] = modality_summary(mi)
    return out


def store_gene_sets(store) -> dict[str, set] | None:
    """The store's gene sets (``_knowledge/gene_sets``), or None when ingest wrote none."""
    from mmray.errors import StoreError
    from mmray.store.knowledge import read_knowledge

    try:
        frame, _ = read_knowledge(store, "gene_sets")
    except StoreError:
        return None
    return {name: set(g["gene"]) for name, g in frame.groupby("set_name", sort=False)}
