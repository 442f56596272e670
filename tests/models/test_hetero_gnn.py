"""hetero_gnn: the patient-gene graph it builds, and predictions independent of the rest of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.batch import make_batch
from mmray.models.hetero_gnn import HeteroGNN

MODS = ("clinical", "expression", "mutations_cnv")
DIMS = {"clinical": 2, "expression": 3, "mutations_cnv": 4}


def _batch():
    feats = {"clinical": np.ones((3, 2)), "expression": np.arange(9.0).reshape(3, 3) - 4,
             "mutations_cnv": np.array([[1, 0, 0, -2], [0, 0, 0, 0], [0, 1, 1, 0]], float)}
    mask = np.array([[True, True, True], [True, False, True], [True, True, False]])
    return make_batch(feats, mask, modalities=MODS)


def test_graph_links_patients_to_their_genes_and_alterations():
    torch.manual_seed(0)
    model = HeteroGNN(task="subtype", modality_dims=DIMS, n_out=3)
    g = model.graph(_batch())
    assert g["patient"].x.shape == (3, 32) and g["expression"].x.shape == (3, 32)
    expr = g["expression", "in", "patient"]
    # patient 1 has no expression: patients 0 and 2 link to all 3 genes, edge attribute = the value
    assert sorted(zip(expr.edge_index[1].tolist(), expr.edge_index[0].tolist())) == [
        (0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert sorted(expr.edge_attr.squeeze(1).tolist()) == [-4.0, -3.0, -2.0, 2.0, 3.0, 4.0]
    alt = g["mutations_cnv", "in", "patient"]
    # only non-zero calls of patients with the modality (patient 2's is masked)
    assert sorted(zip(alt.edge_index[1].tolist(), alt.edge_index[0].tolist(), alt.edge_attr.squeeze(1).tolist())) \
        == [(0, 0, 1.0), (0, 3, -2.0)]


def test_a_patient_prediction_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = HeteroGNN(task="survival_cox", modality_dims=DIMS, n_out=1, n_layers=2).eval()
    batch = _batch()
    with torch.no_grad():
        full = model(batch)
        alone = model(make_batch({m: x[2:] for m, x in batch.features.items()}, batch.mask[2:], modalities=MODS))
    assert torch.allclose(full[2:], alone)


def test_needs_a_gene_modality():
    with pytest.raises(DataError, match="gene modality"):
        HeteroGNN(task="subtype", modality_dims={"clinical": 3}, n_out=3)
