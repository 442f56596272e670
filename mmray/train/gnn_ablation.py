"""Component ablation of a model: the full configuration and one variant without each component.

A ``models`` entry with ``ablation: true`` (``mm_gnn``) runs, on the same
folds, the entry as given (*full*) and one variant per component it uses:

=================  =====================================  ==============================
variant            component removed                      change
=================  =====================================  ==============================
``no_intra``       intra-modality GNN (GAT stacks)        ``intra_layers: 0``
``no_fusion``      inter-modality fusion                  ``fusion: mean, fusion_layers: 0``
``no_contrastive`` graph contrastive pretraining          ``pretrain_epochs: 0``
``no_multitask``   multi-task heads                       ``tasks: [<primary task>]``
=================  =====================================  ==============================

A component the full entry does not use is not ablated (noted).  Variants are
named ``<label>-<variant>`` in the results; :func:`ablation_table` turns the
run summary into one row per variant with the headline metric, its change
from the full model and the auxiliary task metrics.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

VARIANTS: dict[str, tuple[str, dict]] = {
    "no_intra": ("intra-modality GNN", {"intra_layers": 0}),
    "no_fusion": ("inter-modality fusion", {"fusion": "mean", "fusion_layers": 0}),
    "no_contrastive": ("contrastive pretraining", {"pretrain_epochs": 0}),
    "no_multitask": ("multi-task heads", {}),
}
AUX_METRICS = ("response_accuracy", "response_balanced_accuracy", "response_auc", "toxicity_auroc")
COLUMNS = ["task", "modality_set", "variant", "model", "component_removed", "metric", "mean", "sd", "ci_low",
           "ci_high", "delta_vs_full", "n_folds_ok", *(f"{m}_mean" for m in AUX_METRICS)]


def _uses(component: str, hp: dict) -> bool:
    from mmray.models.registry import get_spec

    defaults = {k: v.default for k, v in get_spec("mm_gnn").hparams.items()}
    get = lambda k: hp.get(k, defaults.get(k))  # noqa: E731
    return {"no_intra": int(get("intra_layers") or 0) > 0, "no_fusion": get("fusion") != "mean",
            "no_contrastive": int(get("pretrain_epochs") or 0) > 0,
            "no_multitask": len(get("tasks") or ()) > 1}[component]


def expand_models(models) -> tuple[list[tuple[str, object]], list[str]]:
    """``([(label, entry), ...], notes)``: every entry, plus its ablation variants when it asks for them."""
    out, notes = [], []
    for e in models:
        label = getattr(e, "label", None) or e.name
        out.append((label, e))
        if not getattr(e, "ablation", False):
            continue
        for key, (component, change) in VARIANTS.items():
            if not _uses(key, dict(e.hparams)):
                notes.append(f"{label}: the full entry has no {component}; variant {key} not run")
                continue
            hp = {**dict(e.hparams), **change}
            if key == "no_multitask":
                hp["tasks"] = list(hp["tasks"][:1])
            out.append((f"{label}-{key}", dataclasses.replace(e, hparams=hp, ablation=False,
                                                              label=f"{label}-{key}")))
    return out, notes


def ablation_table(summary: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per (task, set, variant) of the ablated entries ``labels`` (module doc)."""
    rows = []
    for label in labels:
        family = summary[(summary["model"] == label) | summary["model"].str.startswith(f"{label}-")]
        for (task, set_name), g in family.groupby(["task", "modality_set"], sort=False):
            head = g["headline"].iloc[0]
            full = g[g["model"] == label]
            base = float(full[f"{head}_mean"].iloc[0]) if len(full) else np.nan
            for _, r in g.iterrows():
                variant = "full" if r["model"] == label else r["model"][len(label) + 1:]
                mean = float(r.get(f"{head}_mean", np.nan))
                rows.append({"task": task, "modality_set": set_name, "variant": variant, "model": r["model"],
                             "component_removed": VARIANTS.get(variant, ("none",))[0], "metric": head,
                             "mean": mean, "sd": float(r.get(f"{head}_sd", np.nan)),
                             "ci_low": float(r.get(f"{head}_ci_low", np.nan)),
                             "ci_high": float(r.get(f"{head}_ci_high", np.nan)), "delta_vs_full": mean - base,
                             "n_folds_ok": int(r["n_folds_ok"]),
                             **{f"{m}_mean": float(r.get(f"{m}_mean", np.nan)) for m in AUX_METRICS}})
    return pd.DataFrame(rows, columns=COLUMNS)
