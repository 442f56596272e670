"""What a fold adds for graph and multi-task models: the fold graph, auxiliary labels, per-task scores.

:func:`fold_extras` runs inside :func:`mmray.train.fold_fit.prepare_torch_fold`
after the preprocessing is fitted:

* for ``mm_gnn`` it builds the fold's feature graph
  (:func:`mmray.train.fold_graph.build_fold_graph`) from the store's
  interactions, the proteins' genes and the *fit rows* of the fold, and hands
  it to the model as its ``graph`` hyperparameter (so it is saved in every
  checkpoint);
* for a model with ``tasks: [survival_cox, response, toxicity]`` it adds the
  auxiliary label columns (``y__response``: class index, -1 unknown;
  ``y__toxicity``: 1/0, NaN unknown) to every split and the head sizes
  (``task_dims``).

:func:`score_aux_tasks` scores the auxiliary heads on the test fold:
``response_accuracy``, ``response_balanced_accuracy``, ``response_auc``
(one-vs-rest macro AUROC), ``toxicity_auroc`` (macro over the toxicity
labels) and ``toxicity_auroc__<label>``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mmray.errors import DataError, StoreError
from mmray.features.labels_treatment import TOXICITY_PREFIX
from mmray.models.multitask import check_tasks
from mmray.train import metrics as M

log = logging.getLogger(__name__)
GRAPH_MODELS = ("mm_gnn",)
GRAPH_OPTIONS = ("corr_threshold", "corr_top_k", "min_prior_score")


@dataclass
class FoldExtras:
    hparams: dict = field(default_factory=dict)  # merged into the model's hyperparameters
    columns: dict = field(default_factory=dict)  # split -> {column: array}
    graph: dict | None = None
    tasks: tuple[str, ...] = ()
    response_classes: list[str] = field(default_factory=list)
    toxicity_labels: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=8)
def _knowledge(store_uri: str, version_key: str):
    from mmray.store import FeatureStore
    from mmray.store.knowledge import read_knowledge

    try:
        frame, _ = read_knowledge(FeatureStore(store_uri), "interactions")
        return frame
    except StoreError:
        return None


def prior_knowledge(store_uri: str | None) -> tuple[pd.DataFrame | None, dict]:
    """``(interactions or None, protein -> gene)`` from the store (what ingest wrote)."""
    if not store_uri:
        return None, {}
    from mmray.store import FeatureStore
    from mmray.store.knowledge import knowledge_meta

    store = FeatureStore(store_uri)
    meta = knowledge_meta(store, "interactions")
    interactions = _knowledge(store_uri, meta["version"]) if meta else None
    genes = {}
    if store.latest("proteins") is not None:
        genes = dict(store.manifest("proteins").get("params", {}).get("protein_genes") or {})
    return interactions, genes


def response_classes(rows) -> list[str]:
    """Response classes in the ingest's code order, from every row of the fold's table (a label list, as
    subtype classes are; no outcome of a test patient is used)."""
    frame = pd.concat([rows.fit, rows.val, rows.test])
    if "response" not in frame.columns or "response_code" not in frame.columns:
        raise DataError("task 'response' needs the labels group's response columns; set labels.response in "
                        "cohort.yaml and rerun `mmray ingest --modalities clinical`")
    pairs = frame[["response", "response_code"]].dropna().drop_duplicates().sort_values("response_code")
    return [str(v) for v in pairs["response"]]


def toxicity_labels(rows) -> list[str]:
    cols = [c for c in rows.fit.columns if str(c).startswith(TOXICITY_PREFIX)]
    if not cols:
        raise DataError("task 'toxicity' needs toxicity label columns; set labels.toxicity in cohort.yaml and rerun "
                        "`mmray ingest --modalities clinical`")
    return [c[len(TOXICITY_PREFIX):] for c in cols]


def label_columns(frame: pd.DataFrame, *, classes: list[str] | None, toxicity: list[str] | None) -> dict:
    out = {}
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        out["y__response"] = frame["response"].map(index).fillna(-1).to_numpy(np.int64)
    if toxicity is not None:
        out["y__toxicity"] = np.column_stack([pd.to_numeric(frame[TOXICITY_PREFIX + t], errors="coerce")
                                              .to_numpy(np.float32) for t in toxicity]).astype(np.float32)
    return out


def fold_extras(*, model: str, hparams: Mapping, task: str, pre, prepared: Mapping, rows,
                store: str | None) -> FoldExtras | None:
    """The graph and auxiliary labels of a fold (module doc); None for a plain single-task model."""
    tasks = check_tasks(hparams.get("tasks") or (), task) if model in GRAPH_MODELS else (task,)
    if model not in GRAPH_MODELS and len(tasks) == 1:
        return None
    ex = FoldExtras(tasks=tasks)
    if model in GRAPH_MODELS:
        from mmray.train.fold_graph import build_fold_graph

        interactions, protein_genes = prior_knowledge(store)
        opts = {k: hparams[k] for k in GRAPH_OPTIONS if hparams.get(k) is not None}
        ex.graph = build_fold_graph(pre, prepared["fit"], interactions=interactions, protein_genes=protein_genes,
                                    corr_threshold=float(opts.get("corr_threshold", 0.5)),
                                    corr_top_k=int(opts.get("corr_top_k", 2)),
                                    min_score=float(opts.get("min_prior_score", 0.4)))
        ex.hparams["graph"] = ex.graph
    if "response" in tasks:
        ex.response_classes = response_classes(rows)
        ex.hparams.setdefault("task_dims", {})["response"] = len(ex.response_classes)
    if "toxicity" in tasks:
        ex.toxicity_labels = toxicity_labels(rows)
        ex.hparams.setdefault("task_dims", {})["toxicity"] = len(ex.toxicity_labels)
    if len(tasks) > 1:
        for split in ("fit", "val", "test", "train"):
            ex.columns[split] = label_columns(getattr(rows, split),
                                              classes=ex.response_classes if "response" in tasks else None,
                                              toxicity=ex.toxicity_labels if "toxicity" in tasks else None)
    return ex


@torch.inference_mode()
def head_outputs(model, cols: Mapping, *, dims: Mapping[str, int], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every head's output over a column dict (in its row order)."""
    from mmray.train import data as D

    model.eval()
    outs: dict[str, list] = {}
    for batch, _ in D.batches(cols, batch_size=batch_size, modalities=model.modalities, dims=dims):
        for t, v in model(batch, heads=True).items():
            outs.setdefault(t, []).append(v.float().cpu())
    return {t: torch.cat(v).numpy() for t, v in outs.items()}


def score_aux_tasks(model, cols: Mapping, *, dims: Mapping[str, int], extras: FoldExtras
                    ) -> tuple[dict[str, float], pd.DataFrame, list[str]]:
    """``(metrics, per-patient head outputs, notes)`` of the auxiliary tasks on one split."""
    out = head_outputs(model, cols, dims=dims)
    metrics, notes = {}, []
    preds = pd.DataFrame({"patient_id": [str(p) for p in cols["patient_id"]]})
    if "response" in extras.tasks:
        z = out["response"] - out["response"].max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = np.asarray(cols["y__response"])
        for k, c in enumerate(extras.response_classes):
            preds[f"response_p{k}"] = p[:, k]
        known = y >= 0
        if known.sum() >= 2:
            metrics["response_accuracy"] = float((p[known].argmax(1) == y[known]).mean())
            metrics["response_balanced_accuracy"] = M.balanced_accuracy(y[known], p[known].argmax(1))
            try:
                metrics["response_auc"] = M.subtype_auc(y[known], p[known])
            except DataError as e:
                metrics["response_auc"] = math.nan
                notes.append(f"response AUC: {e}")
    if "toxicity" in extras.tasks:
        from sklearn.metrics import roc_auc_score

        p = 1.0 / (1.0 + np.exp(-out["toxicity"]))
        y = np.asarray(cols["y__toxicity"], float)
        aucs = []
        for k, name in enumerate(extras.toxicity_labels):
            preds[f"toxicity_p_{name}"] = p[:, k]
            known = np.isfinite(y[:, k])
            if known.sum() >= 2 and len(np.unique(y[known, k])) == 2:
                auc = float(roc_auc_score(y[known, k], p[known, k]))
                metrics[f"toxicity_auroc__{name}"] = auc
                aucs.append(auc)
            else:
                notes.append(f"toxicity {name}: one class only on this fold; AUROC undefined")
        metrics["toxicity_auroc"] = float(np.mean(aucs)) if aucs else math.nan
    weights = getattr(getattr(model, "task_weights", None), "weights", None)
    if weights is not None:
        metrics.update({f"task_weight_{t}": w for t, w in weights().items()})
    return metrics, preds, notes
