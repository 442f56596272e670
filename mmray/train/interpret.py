"""Interpretation of one fitted fold on its held-out patients: modality importance and gene attributions.

For a torch fusion model and its test fold (never the training rows):

* **modality importance by masking** (model-agnostic): the drop in the
  headline metric (Harrell's C for survival, macro AUC for subtype) when one
  modality is masked for every test patient, i.e. treated exactly as a
  missing modality (``masking_drop``);
* **modality importance by attention**, where the model has one: ``mm_gnn``'s
  patient -> modality cross-attention, ``attention_fusion``'s first-layer
  self-attention received by each modality token, ``late_fusion``'s learned
  combination weights; averaged over the test patients that have the
  modality (``attention``);
* **gene importance by integrated gradients** (captum ``IntegratedGradients``,
  baseline 0 = the training-fold mean after scaling): the attribution of the
  risk to every column of the gene-level modalities (expression, mutation /
  CNV calls, proteins), mean ``|IG|`` over the test patients that have the
  modality.  Proteins are credited to their gene.  Survival tasks only.

Aggregation over folds (ranking, cross-fold stability, pathway enrichment)
is :mod:`mmray.train.interpret_summary`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mmray.errors import DataError
from mmray.models.batch import BAG, Batch
from mmray.train import data as D
from mmray.train import metrics as M
from mmray.train.evaluate import risk_of, softmax

log = logging.getLogger(__name__)
GENE_MODALITIES = ("expression", "mutations_cnv", "proteins")


def test_batch(model, cols: Mapping, dims: Mapping[str, int]) -> Batch:
    """The whole split as one :class:`Batch` (a test fold is tens to hundreds of patients)."""
    n = len(cols["patient_id"])
    batch, _ = next(iter(D.batches(cols, batch_size=max(1, n), modalities=model.modalities, dims=dims)))
    return batch


def _score(task: str, output: np.ndarray, batch: Batch) -> float:
    try:
        if task == "subtype":
            return M.subtype_auc(batch.subtype.numpy(), softmax(output))
        return M.harrell_c(risk_of(task, output), time_days=batch.time_days.numpy(), event=batch.event.numpy())
    except DataError:
        return math.nan


@torch.no_grad()
def masking_drop(model, batch: Batch) -> dict[str, float]:
    """Modality -> headline metric with everything minus it masked for every patient, as a drop."""
    model.eval()
    full = _score(model.task, model(batch).float().numpy(), batch)
    out = {}
    for j, m in enumerate(model.modalities):
        if m == BAG or not bool(batch.mask[:, j].any()):
            continue
        mask = batch.mask.clone()
        mask[:, j] = False
        masked = model(dataclasses.replace(batch, mask=mask)).float().numpy()
        out[m] = full - _score(model.task, masked, batch)
    return out


def attention_importance(model, batch: Batch) -> dict[str, float] | None:
    """Modality -> mean attention weight over the test patients with it; None when the model has none."""
    model.eval()
    mask = model.mask_of(batch)
    if hasattr(model, "modality_attention"):
        w = model.modality_attention(batch)
    elif hasattr(model, "modality_weights"):
        with torch.no_grad():
            w = model.modality_weights(mask)
    elif hasattr(model, "encoder") and hasattr(model, "tokenizers"):
        w = _self_attention_received(model, batch, mask)
    else:
        return None
    w = w.float()
    return {m: float(w[mask[:, j], j].mean()) for j, m in enumerate(model.modalities)
            if m != BAG and bool(mask[:, j].any())}


def _self_attention_received(model, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
    """``[B, M]``: attention each modality token receives in attention fusion's first layer (mean over the
    present query tokens).  Grad mode keeps PyTorch off the fused fast path, which returns no weights."""
    attn = model.encoder.layers[0].self_attn
    captured = {}

    def pre(_, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def post(_, args, output):
        captured["w"] = output[1]

    h1, h2 = attn.register_forward_pre_hook(pre, with_kwargs=True), attn.register_forward_hook(post)
    try:
        with torch.enable_grad():
            model(batch)
    finally:
        h1.remove()
        h2.remove()
    w = captured["w"].detach()  # [B, M, M] query x key
    q = mask.unsqueeze(-1).float()
    return (w * q).sum(1) / q.sum(1).clamp(min=1)


def integrated_gradients(model, batch: Batch, *, modalities: Sequence[str], n_steps: int = 24,
                         internal_batch_size: int = 256) -> dict[str, np.ndarray]:
    """Modality -> ``[B, d_m]`` IG attributions of the risk (survival models) to its columns."""
    from captum.attr import IntegratedGradients

    if not model.task.startswith("survival"):
        raise DataError(f"gene attributions are computed for survival models, not {model.task!r}")
    model.eval()
    names = list(batch.features)
    pos = [names.index(m) for m in modalities]
    fixed = [batch.features[m] for m in names if m not in modalities]
    fixed_names = [m for m in names if m not in modalities]

    def forward(*xs):
        inputs, rest, mask = xs[:len(pos)], xs[len(pos):-1], xs[-1]
        feats = dict(zip(modalities, inputs)) | dict(zip(fixed_names, rest))
        out = model(dataclasses.replace(batch, features=feats, mask=mask.bool(), time_days=None, event=None,
                                        subtype=None, response=None, toxicity=None, patient_ids=[]))
        if model.task == "survival_discrete":  # a differentiable risk from the hazard logits
            from mmray.models.losses import discrete_risk

            return discrete_risk(out)
        return out

    ig = IntegratedGradients(forward)
    inputs = tuple(batch.features[m].detach().clone() for m in modalities)
    with torch.enable_grad():
        attr = ig.attribute(inputs, baselines=tuple(torch.zeros_like(x) for x in inputs),
                            additional_forward_args=(*fixed, batch.mask.float()), n_steps=n_steps,
                            internal_batch_size=internal_batch_size)
    return {m: a.detach().numpy() for m, a in zip(modalities, attr)}


def gene_of_feature(name: str, *, protein_genes: Mapping[str, str] | None = None) -> str:
    """``expression__MKI67`` -> MKI67; ``proteins__Ki-67`` -> MKI67 (with the map) or the name's symbol."""
    group, _, col = str(name).partition("__")
    col = col or group
    if group == "proteins":
        from mmray.ingest.tables_proteins import gene_of_protein

        return (protein_genes or {}).get(col) or gene_of_protein(col)
    return col


def interpret_fold(model, *, cols: Mapping, dims: Mapping[str, int], feature_names: Mapping[str, list[str]],
                   fold: int, protein_genes: Mapping[str, str] | None = None, ig_steps: int = 24
                   ) -> dict[str, pd.DataFrame]:
    """``{"modality_importance": ..., "gene_importance": ...}`` of one fold (module doc)."""
    batch = test_batch(model, cols, dims)
    rows = [{"fold": fold, "modality": m, "method": "masking_drop", "value": v}
            for m, v in masking_drop(model, batch).items()]
    att = attention_importance(model, batch)
    rows += [{"fold": fold, "modality": m, "method": "attention", "value": v} for m, v in (att or {}).items()]
    tables = {"modality_importance": pd.DataFrame(rows, columns=["fold", "modality", "method", "value"])}
    genes = [m for m in GENE_MODALITIES if m in model.modality_dims and bool(batch.present(m).any())]
    if genes and model.task.startswith("survival") and ig_steps > 0:
        attr = integrated_gradients(model, batch, modalities=genes, n_steps=ig_steps)
        out = []
        for m in genes:
            present = batch.present(m).numpy()
            imp = np.abs(attr[m][present]).mean(0)
            for f, v in zip(feature_names[m], imp):
                out.append({"fold": fold, "feature": f, "modality": m,
                            "gene": gene_of_feature(f, protein_genes=protein_genes), "importance": float(v)})
        frame = pd.DataFrame(out)
        frame["rank"] = frame["importance"].rank(ascending=False, method="first").astype(int)
        tables["gene_importance"] = frame.sort_values("rank").reset_index(drop=True)
    return tables
