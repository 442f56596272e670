"""A fitted torch fold's outputs beyond the headline scores: auxiliary tasks, graph, interpretation.

:func:`add_fold_extras` completes a :class:`~mmray.train.fold_fit.FoldOutcome`:

* auxiliary task metrics and per-patient head outputs of a multi-task model
  (:func:`mmray.train.gnn_fold.score_aux_tasks`), the learned task weights,
  and the contrastive pretraining losses (first and last epoch);
* the fold's feature graph as ``graph_edges`` rows (``mm_gnn``);
* ``modality_importance`` and ``gene_importance`` of the held-out patients
  (:mod:`mmray.train.interpret`) for fusion models when the job's
  ``interpret`` settings ask for it.  An interpretation that fails is a note,
  never a failed fold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from mmray.models.batch import BAG

log = logging.getLogger(__name__)


def interpretable(model, cfg: Mapping | None, model_name: str = "") -> bool:
    """Fusion models (two or more tabular modalities, no tile bags) when interpretation is on, limited to
    ``cfg["models"]`` when that names any."""
    if not cfg or not cfg.get("enabled", True):
        return False
    if cfg.get("models") and model_name not in cfg["models"]:
        return False
    return BAG not in model.modalities and len(model.modality_dims) >= 2


def add_fold_extras(out, *, tf, model, fold: int, settings, history: list[dict], model_name: str = "") -> None:
    ex = tf.extras
    if ex is not None:
        if ex.graph is not None:
            from mmray.train.fold_graph import edge_table

            out.tables["graph_edges"] = edge_table(ex.graph, fold=fold)
            out.info["graph_edges"] = int(len(out.tables["graph_edges"]))
        if len(ex.tasks) > 1:
            from mmray.train.gnn_fold import score_aux_tasks

            metrics, preds, notes = score_aux_tasks(model, tf.cols["test"], dims=tf.pre.dims, extras=ex)
            out.metrics.update(metrics)
            out.notes += notes
            out.predictions = out.predictions.merge(preds, on="patient_id", how="left")
    first = history[0] if history else {}
    for k in ("pretrain_loss_first", "pretrain_loss_last", "pretrain_epochs"):
        if k in first:
            out.info[k] = first[k]
    cfg = dict(settings.interpret or {})
    if not interpretable(model, cfg, model_name):
        return
    from mmray.train.interpret import interpret_fold

    t0 = time.perf_counter()
    names = {m: list(b.feature_names_) for m, b in tf.pre.blocks_.items()}
    protein_genes = (ex.graph or {}).get("protein_genes") if ex is not None and ex.graph else None
    if protein_genes is None and "proteins" in model.modality_dims:
        from mmray.train.gnn_fold import prior_knowledge

        protein_genes = prior_knowledge(settings.store)[1]
    from mmray.train.ray_torch import torch_threads

    try:
        with torch_threads(settings.threads_per_worker):
            out.tables.update(interpret_fold(model, cols=tf.cols["test"], dims=tf.pre.dims, feature_names=names,
                                             fold=fold, protein_genes=protein_genes,
                                             ig_steps=int(cfg.get("ig_steps", 24))))
    except Exception as e:  # noqa: BLE001  an interpretation is a side product: the fold's scores stand
        log.warning("fold %d: interpretation failed: %s", fold, e)
        out.notes.append(f"interpretation failed: {e}")
    out.info["interpret_seconds"] = round(time.perf_counter() - t0, 2)
