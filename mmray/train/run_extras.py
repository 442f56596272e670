"""What a train run writes besides results/summary/ablation: per-fold extra tables and their summaries.

Files under the run's output (all optional, present when a model made them):

``graph_edges.parquet``          every fold's feature graph of ``mm_gnn`` (prior + fold-fitted correlation edges)
``modality_importance.parquet``  per fold: masking drop of the headline metric and attention weight per modality
``gene_importance.parquet``      per fold: mean |integrated gradients| per gene-level column of the held-out patients
``gene_ranking.csv``             genes ranked over folds (:mod:`mmray.train.interpret_summary`)
``gene_stability.csv``           cross-fold top-k overlap and Spearman correlation
``enrichment.csv``               top-k genes vs the store's gene sets (hypergeometric + BH FDR)
``modality_summary.csv``         modality importance over folds, ranked
``gnn_ablation.csv``             component ablation of entries with ``ablation: true`` (:mod:`mmray.train.gnn_ablation`)

and the same tables as records in ``results.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import pandas as pd

from mmray.train import results as R
from mmray.train.gnn_ablation import ablation_table
from mmray.train.interpret_summary import store_gene_sets, summarize_interpretation

log = logging.getLogger(__name__)
PER_FOLD = ("graph_edges", "modality_importance", "gene_importance")


@dataclass
class RunExtras:
    files: dict[str, bytes] = field(default_factory=dict)
    records: dict[str, list] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def entry_settings(settings, entry):
    """The fold settings of one ``models`` entry: its ``preprocess`` overrides merged over the job's; a
    modality set to null drops the job's setting (e.g. ``screen: {expression: null}``: no label screening)."""
    pre = dict(getattr(entry, "preprocess", None) or {})
    if not pre:
        return settings

    def merged(job, own):
        out = {**dict(job), **dict(own or {})}
        return {m: v for m, v in out.items() if v is not None}
    return dataclasses.replace(settings, top_k_var=merged(settings.top_k_var, pre.get("top_k_var")),
                               screen=merged(settings.screen, pre.get("screen")))


def run_extras(cfg, store, summary: pd.DataFrame, tables: dict[str, pd.DataFrame], entries) -> RunExtras:
    """Per-fold tables, their summaries and the component ablation, as files and records."""
    out = RunExtras()
    for name in PER_FOLD:
        if name in tables and len(tables[name]):
            out.files[f"{name}.parquet"] = R.parquet_bytes(tables[name])
    if cfg.interpret.enabled:
        try:
            gene_sets = store_gene_sets(store)
            summ = summarize_interpretation(tables, gene_sets=gene_sets, top_k=cfg.interpret.top_k)
        except Exception as e:  # noqa: BLE001  a summary must not cost the run's results
            log.warning("interpretation summary failed: %s", e)
            summ = {}
        for name, frame in summ.items():
            out.tables[name] = frame
            out.files[f"{name}.csv"] = frame.to_csv(index=False).encode()
            out.records[name] = R.records(frame.head(5000))
    labels = [label for label, e in entries if getattr(e, "ablation", False)]
    if labels and len(summary):
        abl = ablation_table(summary, labels)
        out.tables["gnn_ablation"] = abl
        out.files["gnn_ablation.csv"] = abl.to_csv(index=False).encode()
        out.records["gnn_ablation"] = R.records(abl)
    return out
