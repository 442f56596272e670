"""mm_gnn: its feature graph, per-patient (inductive) predictions, heads, attention and augmentations.

Shapes, masking and "beats random" are in test_fusion_models.py with the other torch models.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.batch import make_batch
from mmray.models.mm_gnn import MMGNN
from mmray.models.mm_graph import BatchedEdges, check_spec, default_spec

DIMS = {"clinical": 3, "expression": 4, "mutations_cnv": 2, "proteins": 2}
MODS = tuple(DIMS)


def _spec():
    """Genes A, B, C, D (expression), mutations of A and B on the same gene nodes, proteins of A and C."""
    return {"nodes": {"gene": ["A", "B", "C", "D"], "protein": ["pA", "pC"], "clinical": ["c0", "c1", "c2"]},
            "inputs": {"expression": {"node": "gene", "index": [0, 1, 2, 3], "channel": [0, 0, 0, 0]},
                       "mutations_cnv": {"node": "gene", "index": [0, 1], "channel": [1, 1]},
                       "proteins": {"node": "protein", "index": [0, 1], "channel": [0, 0]},
                       "clinical": {"node": "clinical", "index": [0, 1, 2], "channel": [0, 0, 0]}},
            "edges": {"gene|ppi|gene": {"src": [0, 1, 1, 2], "dst": [1, 0, 2, 1], "weight": [0.9, 0.9, 0.7, 0.7]},
                      "gene|codes_for|protein": {"src": [0, 2], "dst": [0, 1], "weight": [1.0, 1.0]},
                      "protein|coded_by|gene": {"src": [0, 1], "dst": [0, 2], "weight": [1.0, 1.0]},
                      "clinical|corr|clinical": {"src": [0, 1], "dst": [1, 0], "weight": [0.6, 0.6]}}}


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    feats = {m: rng.normal(size=(n, d)) for m, d in DIMS.items()}
    mask = np.ones((n, len(MODS)), bool)
    mask[1, 1] = mask[2, 3] = mask[3, 2] = False
    return make_batch(feats, mask, modalities=MODS, time_days=rng.uniform(10, 900, n), event=rng.random(n) < 0.6,
                      response=np.array([0, 1, 2, -1, 1, 0]), toxicity=np.array([[1, 0], [0, np.nan]] * (n // 2)))


def _model(**hp):
    torch.manual_seed(0)
    return MMGNN(task="survival_cox", modality_dims=DIMS, n_out=1, graph=_spec(), **hp).eval()


def test_edges_are_replicated_per_patient_without_cross_patient_edges():
    e = BatchedEdges([0, 1], [1, 2], [0.5, 0.7], n_src=3, n_dst=3)
    ei, attr = e.batched(3, "cpu")
    assert ei.tolist() == [[0, 1, 3, 4, 6, 7], [1, 2, 4, 5, 7, 8]]
    assert (ei // 3)[0].tolist() == (ei // 3)[1].tolist()  # both ends of every edge in the same patient
    assert attr.squeeze(1).tolist() == pytest.approx([0.5, 0.7] * 3)


def test_a_patient_prediction_does_not_depend_on_the_rest_of_the_batch():
    model = _model()
    batch = _batch()
    with torch.no_grad():
        full = model(batch)
        for i in (0, 3):
            one = make_batch({m: x[i:i + 1] for m, x in batch.features.items()}, batch.mask[i:i + 1], modalities=MODS)
            assert torch.allclose(model(one), full[i:i + 1], atol=1e-5)


def test_graph_edges_carry_messages():
    """With the gene-gene edges, a gene's value changes a neighbour's embedding; without, it cannot."""
    batch = _batch()
    for intra, changed in ((2, True), (0, False)):
        model = _model(intra_layers=intra)
        bumped = dict(batch.features)
        bumped["expression"] = batch.features["expression"].clone()
        bumped["expression"][:, 0] += 3.0
        with torch.no_grad():
            h0 = model.node_embeddings(batch)["gene"][:, 2]  # gene C: neighbour of B, two hops from A
            h1 = model.node_embeddings(dataclasses.replace(batch, features=bumped))["gene"][:, 2]
        assert (not torch.allclose(h0, h1)) is changed


def test_heads_attention_and_views():
    model = _model(tasks=["survival_cox", "response", "toxicity"], task_dims={"response": 3, "toxicity": 2})
    batch = _batch()
    with torch.no_grad():
        out = model(batch, heads=True)
        assert out["survival_cox"].shape == (6,) and out["response"].shape == (6, 3) and out["toxicity"].shape == (6, 2)
        assert torch.equal(out["survival_cox"], model(batch))
        w = model.modality_attention(batch)
    mask = model.mask_of(batch)
    assert torch.allclose(w.sum(1), torch.ones(6), atol=1e-5)  # attention over the present modalities only
    assert torch.all(w[~mask] == 0)
    torch.manual_seed(1)
    with torch.no_grad():
        v1, v2 = model.embed(batch, augment=True), model.embed(batch, augment=True)
        plain, again = model.embed(batch), model.embed(batch)
    assert not torch.allclose(v1, v2) and not torch.allclose(v1, plain)  # two random views per patient
    assert torch.equal(again, plain)  # eval without augmentation is deterministic


def test_mean_fusion_ablation_and_task_checks():
    model = _model(fusion="mean", fusion_layers=0)
    batch = _batch()
    with torch.no_grad():
        w = model.modality_attention(batch)
    mask = model.mask_of(batch).float()
    assert torch.allclose(w, mask / mask.sum(1, keepdim=True))
    with pytest.raises(DataError, match="task_dims"):
        MMGNN(task="survival_cox", modality_dims=DIMS, n_out=1, tasks=["survival_cox", "response"])
    with pytest.raises(DataError, match="fusion"):
        MMGNN(task="survival_cox", modality_dims=DIMS, n_out=1, fusion="concat")


def test_graph_spec_is_checked_against_the_inputs():
    assert set(default_spec(DIMS)["nodes"]) == {"gene", "protein", "clinical"}
    bad = _spec()
    bad["inputs"]["expression"]["index"] = [0, 1, 2]
    with pytest.raises(DataError, match="expression"):
        check_spec(bad, DIMS)
    bad = _spec()
    bad["edges"]["gene|ppi|gene"]["dst"] = [9, 0, 2, 1]
    with pytest.raises(DataError, match="out of range"):
        check_spec(bad, DIMS)
