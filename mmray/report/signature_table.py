"""Report section: the per-gene-signature survival models, their C-index and whether they were registered."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from mmray.report import render
from mmray.report.document import para


def _c_text(r) -> str:
    if r["c_mean"] is None or not np.isfinite(r["c_mean"]):
        return "–"
    sd = f" ± {r['c_sd']:.3f}" if r["c_sd"] is not None and np.isfinite(r["c_sd"]) else ""
    return f"{r['c_mean']:.3f}{sd}"


def _ci_text(r) -> str:
    if r["c_oof"] is None or not np.isfinite(r["c_oof"]):
        return "–"
    ci = (f" [{r['c_low']:.3f}, {r['c_high']:.3f}]" if r["c_low"] is not None and np.isfinite(r["c_low"])
          else "")
    return f"{r['c_oof']:.3f}{ci}"


def _genes_text(genes: str, n_found: int | None, *, show: int = 12) -> str:
    """The first genes of the run's gene tag (which MLflow's tag size may already have cut), and how many more."""
    names = [g for g in str(genes or "").split(",") if g and not g.startswith("...")]
    more = (n_found if n_found is not None else len(names)) - min(show, len(names))
    return ", ".join(names[:show]) + (f" ... ({more} more)" if more > 0 else "")


def _result(r) -> str:
    if r["outcome"] == "registered":
        return f"registered {r['model']} v{r['version']}" + (" (champion)" if r["champion"] else " (not champion)")
    if r["outcome"] == "gate_failed":
        return f"not registered: {r['reason']}"
    return f"{r['outcome']}: {r['reason']}"


def signatures_section(runs: pd.DataFrame) -> list[str]:
    """``runs``: :func:`mmray.report.inputs.signature_runs` (one row per signature)."""
    runs = runs.copy()
    gate = " / ".join(dict.fromkeys(runs["gate"].astype(str)))
    runs["order"] = runs["c_mean"].astype(float).fillna(-1.0)
    runs = runs.sort_values(["order", "signature"], ascending=[False, True])
    rows = [{"signature": r["signature"], "genes": f"{r['genes_found']} of {r['genes_in_set']}"
             if r["genes_in_set"] is not None else r["genes_found"],
             "members": _genes_text(r["genes"], r["genes_found"]), "c": _c_text(r), "oof": _ci_text(r),
             "result": _result(r)}
            for _, r in runs.iterrows()]
    n_reg = int((runs["outcome"] == "registered").sum())
    return [para(f"{len(runs)} signature model(s), one penalised Cox model per gene set on the expression "
                 f"matrix, cross-validated on the shared folds; <b>{n_reg}</b> passed the gate ({html.escape(gate)}) "
                 f"and are registered. C-index: Harrell's C mean ± sd over folds; pooled out-of-fold C with its "
                 f"95% bootstrap interval."),
            render.table(rows, [("signature", "signature"), ("genes", "genes found"), ("members", "genes used"),
                                ("c", "C-index (folds)"), ("oof", "out-of-fold C [95% CI]"),
                                ("result", "registered / why not")])]
