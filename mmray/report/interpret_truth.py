"""A run's interpretation against a synthetic cohort's planted truth (``truth.json`` next to ``cohort.yaml``).

* planted survival genes: the expression genes loading on the proliferation
  (harmful) or immune (protective) factor, and the driver genes whose
  mutation or copy-number call carries a log-hazard effect;
* planted pathways: the gene sets whose signal is ``survival_harmful`` or
  ``survival_protective``; noise sets: signal ``none``;
* planted modality weights: ``model.weights`` (log-hazard weight of each
  modality's factor), mapped to model modalities (``ct`` -> ``radiomics``,
  ``wsi`` -> ``slide``).

Real cohorts have no ``truth.json``: every function here then returns None
and the report shows the interpretation alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)
TRUTH_MODALITY = {"clinical": "clinical", "expression": "expression", "mutations_cnv": "mutations_cnv",
                  "ct": "radiomics", "wsi": "slide"}
PLANTED_SIGNALS = ("survival_harmful", "survival_protective")


def load_truth(cohort: str | None) -> dict | None:
    """``truth.json`` beside the cohort spec, or None (no cohort, not synthetic, unreadable)."""
    if not cohort or str(cohort).startswith("s3://"):
        return None
    path = Path(cohort).resolve().parent / "truth.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def planted_survival_genes(truth: dict) -> set[str]:
    g = truth.get("genomics", {})
    genes = {name for name, e in (g.get("planted_genes") or {}).items()
             if e.get("factor") in ("z_prolif", "z_immune")}
    genes |= {name for name, e in (g.get("mutation_effects") or {}).items() if abs(float(e)) > 0}
    genes |= {name for name, e in (g.get("cnv_effects") or {}).items() if abs(float(e.get("log_hazard", 0))) > 0}
    return genes


def pathway_truth(truth: dict) -> dict[str, str]:
    """Gene set -> its planted signal (``survival_harmful``, ``survival_protective``, ``weak``, ``subtype``,
    ``none``)."""
    return {name: s.get("signal", "none") for name, s in (truth.get("genomics", {}).get("signatures") or {}).items()}


def gene_recovery(ranking: pd.DataFrame, truth: dict, *, top_k: int = 50) -> dict:
    """Precision@k and recall of the planted survival genes among the top-k of a ranking."""
    planted = planted_survival_genes(truth)
    top = list(ranking.sort_values("rank")["gene"].head(top_k))
    seen = planted & set(ranking["gene"])
    hits = [g for g in top if g in planted]
    return {"top_k": top_k, "planted": len(planted), "planted_seen": len(seen), "hits": len(hits),
            "precision_at_k": len(hits) / max(len(top), 1), "recall": len(hits) / max(len(planted), 1),
            "recall_of_seen": len(hits) / max(len(seen), 1), "hit_genes": hits,
            "missed_seen": sorted(seen - set(hits))}


def enrichment_truth(enrichment: pd.DataFrame, truth: dict, *, fdr: float = 0.05) -> dict:
    """Which planted pathways are found at ``fdr`` and whether any noise set is (a false positive)."""
    signal = pathway_truth(truth)
    e = enrichment.assign(signal=enrichment["set_name"].map(signal).fillna("unknown"))
    sig = e[e["fdr"] <= fdr]
    planted = [s for s, v in signal.items() if v in PLANTED_SIGNALS]
    return {"fdr": fdr, "planted": planted, "planted_found": sorted(set(sig["set_name"]) & set(planted)),
            "noise_found": sorted(sig.loc[sig["signal"] == "none", "set_name"]),
            "other_found": sorted(sig.loc[~sig["signal"].isin([*PLANTED_SIGNALS, "none"]), "set_name"])}


def modality_truth(summary: pd.DataFrame, truth: dict) -> pd.DataFrame | None:
    """Per method: the modality ranking next to the planted weights, with their Spearman correlation."""
    weights = {TRUTH_MODALITY[k]: float(v) for k, v in (truth.get("model", {}).get("weights") or {}).items()
               if k in TRUTH_MODALITY}
    if not weights or summary is None or summary.empty:
        return None
    rows = []
    for method, g in summary.groupby("method", sort=False):
        g = g[g["modality"].isin(weights)]
        if len(g) < 2:
            continue
        w = g["modality"].map(weights).to_numpy()
        rho = float(stats.spearmanr(g["mean"], w).statistic) if len(set(w)) > 1 else np.nan
        strongest = sorted(weights, key=lambda m: -weights[m])
        rows.append({"method": method, "ranking": ",".join(g.sort_values("rank")["modality"]),
                     "truth_ranking": ",".join(m for m in strongest if m in set(g["modality"])), "spearman": rho})
    return pd.DataFrame(rows)
