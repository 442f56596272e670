"""Heterogeneous patient-gene graph model (PyG ``HeteroData`` + ``HeteroConv`` of ``GATConv``).

Each batch becomes a bipartite graph: one node per patient, one node per
feature of each *gene modality* (``expression``: genes; ``mutations_cnv``:
alteration calls), with learned gene embeddings as node features.  A
patient is linked to

* every gene of its expression profile, edge attribute = the (scaled)
  expression value;
* every alteration it carries (non-zero mutation / CNV value), edge
  attribute = the call.

Patients start from an encoding of their other (context) modalities, e.g.
clinical, radiomics, slide (masked ones zeroed), then ``n_layers`` rounds of
gene -> patient attention (``GATConv`` with ``edge_dim=1``, one per relation,
summed by ``HeteroConv``) update them with residual connections; a head reads
the patient node out.

A masked gene modality contributes no edges, so its values cannot reach the
output.  Messages flow from (parameter-only) gene nodes to patients only, so
a patient's prediction never depends on the other patients in the batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATConv, HeteroConv

from mmray.errors import DataError
from mmray.models.batch import Batch
from mmray.models.blocks import TaskModel, keep

GENE_MODALITIES = ("expression", "mutations_cnv")


class HeteroGNN(TaskModel):
    """Patient-gene bipartite GAT; gene modalities become edges, others the patient's start state."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 dim: int = 32, n_layers: int = 1, n_heads: int = 2, dropout: float = 0.2):
        super().__init__(task=task, modality_dims=modality_dims, n_out=n_out)
        self.genes = tuple(m for m in self.modality_dims if m in GENE_MODALITIES)
        self.context = tuple(m for m in self.modality_dims if m not in GENE_MODALITIES)
        if not self.genes:
            raise DataError(f"hetero_gnn needs a gene modality ({', '.join(GENE_MODALITIES)}); got "
                            f"{sorted(self.modality_dims)}")
        if dim % n_heads:
            raise DataError(f"hetero_gnn: dim={dim} must be divisible by n_heads={n_heads}")
        self.gene_embedding = nn.ParameterDict({m: nn.Parameter(torch.randn(self.modality_dims[m], dim) * 0.1)
                                                for m in self.genes})
        ctx_in = sum(self.modality_dims[m] for m in self.context) + len(self.modality_dims)
        self.patient_in = nn.Sequential(nn.Linear(ctx_in, dim), nn.LayerNorm(dim), nn.ReLU())
        with warnings.catch_warnings():  # gene nodes are never destinations: by design (see module doc)
            warnings.filterwarnings("ignore", message=".*do not get updated during message passing.*")
            self.convs = nn.ModuleList(
                HeteroConv({(m, "in", "patient"): GATConv((dim, dim), dim // n_heads, heads=n_heads, edge_dim=1,
                                                          add_self_loops=False, dropout=dropout)
                            for m in self.genes}, aggr="sum")
                for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_out)

    def graph(self, batch: Batch) -> HeteroData:
        """The batch as ``HeteroData``: ``patient`` and gene-modality nodes, ``(gene, in, patient)`` edges."""
        mask = self.mask_of(batch)
        ctx = [keep(batch.feature(m), batch.present(m)) for m in self.context]
        data = HeteroData()
        data["patient"].x = self.patient_in(torch.cat(ctx + [mask.to(torch.float32)], dim=1))
        for m in self.genes:
            x = keep(batch.feature(m), batch.present(m))
            link = batch.present(m).unsqueeze(1) & (torch.ones_like(x, dtype=torch.bool) if m == "expression"
                                                    else x != 0)
            patient, gene = torch.nonzero(link, as_tuple=True)
            data[m].x = self.gene_embedding[m]
            data[m, "in", "patient"].edge_index = torch.stack([gene, patient])
            data[m, "in", "patient"].edge_attr = x[patient, gene].unsqueeze(1)
        return data

    def forward(self, batch: Batch) -> torch.Tensor:
        data = self.graph(batch)
        x = data.x_dict
        for conv, norm in zip(self.convs, self.norms):
            upd = conv(x, data.edge_index_dict, edge_attr_dict=data.edge_attr_dict)["patient"]
            x = {**x, "patient": norm(x["patient"] + self.drop(torch.relu(upd)))}
        return self.shape_output(self.head(x["patient"]))
