"""PORPOISE-style pathology-omic fusion (Chen et al., Cancer Cell 2022).

* pathology: gated attention-MIL (Ilse et al., 2018) over each patient's tile
  bag.  Bags are variable-size and unpadded (``bag_feats [N_total, d]``,
  ``bag_index [N_total]``); attention is a segment-wise softmax over
  ``bag_index`` (``torch_geometric.utils.softmax``), so it sums to 1 per
  patient, and pooling is a scatter-sum.
* omics: a self-normalising network (SELU + AlphaDropout, LeCun-normal init)
  over the concatenated tabular modalities (masked ones zeroed) plus their
  mask indicators.
* fusion: gated Kronecker fusion as in Pathomic Fusion / PORPOISE: each
  modality is gated by a bilinear form of both, a 1 is appended to each so
  unimodal terms survive, the outer product is flattened, then an MLP with a
  skip connection.

Missing modalities: the fused head is used only when a patient has both a
bag (at least one tile, mask True) and at least one omic modality.  With only
the bag, a pathology head on the MIL embedding is used; with only omics, an
omic head on the SNN embedding; with neither, a learned constant.  All three
heads train jointly on the patients that reach them.

``forward_with_attention(batch)`` also returns ``[N_total]`` attention weights
(0 for tiles of patients whose bag is masked) for slide heatmaps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch_geometric.utils import softmax as segment_softmax

from mmray.errors import DataError
from mmray.models.batch import BAG, Batch
from mmray.models.blocks import TaskModel, keep


class GatedAttentionMIL(nn.Module):
    """Gated attention pooling: ``a_k = w^T (tanh(V h_k) * sigmoid(U h_k))``, softmax per bag."""

    def __init__(self, in_dim: int, dim: int, *, dropout: float):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.att_v = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout))
        self.att_u = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.att_w = nn.Linear(dim, 1)
        self.rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, feats: torch.Tensor, index: torch.Tensor, n_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats [N, in_dim]``, ``index [N]`` -> ``(pooled [n_bags, dim], attention [N])``."""
        h = self.fc(feats)
        score = self.att_w(self.att_v(h) * self.att_u(h)).squeeze(-1)
        attn = segment_softmax(score, index, num_nodes=n_bags)
        pooled = torch.zeros(n_bags, h.shape[1], dtype=h.dtype, device=h.device)
        pooled = pooled.index_add(0, index, attn.unsqueeze(-1) * h)
        return self.rho(pooled), attn


class SNN(nn.Module):
    """Self-normalising MLP: ``Linear -> SELU -> AlphaDropout`` blocks, LeCun-normal weights."""

    def __init__(self, in_dim: int, dim: int, *, n_layers: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_layers):
            layers += [nn.Linear(d, dim), nn.SELU(), nn.AlphaDropout(dropout)]
            d = dim
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.weight.shape[1]))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GatedKroneckerFusion(nn.Module):
    """Pathomic-Fusion bilinear gating + Kronecker product of ``[h1, 1]`` and ``[h2, 1]``."""

    def __init__(self, dim1: int, dim2: int, *, out_dim: int, dropout: float):
        super().__init__()
        self.h1 = nn.Sequential(nn.Linear(dim1, dim1), nn.ReLU())
        self.z1 = nn.Bilinear(dim1, dim2, dim1)
        self.o1 = nn.Sequential(nn.Linear(dim1, dim1), nn.ReLU(), nn.Dropout(dropout))
        self.h2 = nn.Sequential(nn.Linear(dim2, dim2), nn.ReLU())
        self.z2 = nn.Bilinear(dim1, dim2, dim2)
        self.o2 = nn.Sequential(nn.Linear(dim2, dim2), nn.ReLU(), nn.Dropout(dropout))
        self.post = nn.Dropout(dropout)
        self.enc1 = nn.Sequential(nn.Linear((dim1 + 1) * (dim2 + 1), out_dim), nn.ReLU(), nn.Dropout(dropout))
        self.enc2 = nn.Sequential(nn.Linear(out_dim + dim1 + dim2 + 2, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """``v1 [B, dim1]``, ``v2 [B, dim2]`` -> ``[B, out_dim]``."""
        o1 = self.o1(torch.sigmoid(self.z1(v1, v2)) * self.h1(v1))
        o2 = self.o2(torch.sigmoid(self.z2(v1, v2)) * self.h2(v2))
        one = torch.ones(v1.shape[0], 1, dtype=v1.dtype, device=v1.device)
        o1, o2 = torch.cat([o1, one], 1), torch.cat([o2, one], 1)
        kron = torch.bmm(o1.unsqueeze(2), o2.unsqueeze(1)).flatten(1)
        out = self.enc1(self.post(kron))
        return self.enc2(torch.cat([out, o1, o2], 1))


class Porpoise(TaskModel):
    """Gated attention-MIL (tiles) x SNN (omics) with gated Kronecker fusion; unimodal fallbacks."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 path_dim: int = 32, omic_dim: int = 32, omic_layers: int = 2, fusion_dim: int = 32,
                 dropout: float = 0.25):
        if not bag_dim:
            raise DataError("model 'porpoise' needs the tile bag: pass bag_dim (tile feature width)")
        super().__init__(task=task, modality_dims=modality_dims, n_out=n_out, bag_dim=bag_dim)
        self.omics = tuple(self.modality_dims)
        omic_in = sum(self.modality_dims.values()) + len(self.omics)
        self.mil = GatedAttentionMIL(bag_dim, path_dim, dropout=dropout)
        self.snn = SNN(omic_in, omic_dim, n_layers=omic_layers, dropout=dropout)
        self.fusion = GatedKroneckerFusion(path_dim, omic_dim, out_dim=fusion_dim, dropout=dropout)
        self.fused_head = nn.Linear(fusion_dim, n_out)
        self.path_head = nn.Linear(path_dim, n_out)
        self.omic_head = nn.Linear(omic_dim, n_out)
        self.missing = nn.Parameter(torch.zeros(n_out))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_with_attention(batch)[0]

    def forward_with_attention(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, attention [N_total])``; attention sums to 1 over each present bag."""
        B = batch.size
        if batch.bag_feats is None or batch.bag_index is None:
            raise DataError("porpoise needs bag_feats and bag_index in the batch (collate with modalities "
                            "including 'tiles'); a patient without slides has zero rows")
        index = batch.bag_index
        n_tiles = torch.bincount(index, minlength=B) if index.numel() else torch.zeros(B, dtype=torch.long,
                                                                                     device=index.device)
        has_bag = batch.present(BAG) & (n_tiles > 0)
        sel = has_bag[index]
        path, attn_sel = self.mil(batch.bag_feats[sel], index[sel], B)
        attn = torch.zeros(index.shape[0], dtype=attn_sel.dtype, device=attn_sel.device)
        attn = attn.masked_scatter(sel, attn_sel) if attn_sel.numel() else attn
        path = keep(path, has_bag)

        omic_mask = torch.stack([batch.present(m) for m in self.omics], dim=1)
        x = torch.cat([keep(batch.feature(m), omic_mask[:, j]) for j, m in enumerate(self.omics)]
                      + [omic_mask.to(path.dtype)], dim=1)
        has_omic = omic_mask.any(1)
        omic = keep(self.snn(x), has_omic)

        fused = self.fused_head(self.fusion(path, omic))
        out = torch.where((has_bag & has_omic).unsqueeze(-1), fused,
                          torch.where(has_bag.unsqueeze(-1), self.path_head(path),
                                      torch.where(has_omic.unsqueeze(-1), self.omic_head(omic),
                                                  self.missing.expand_as(fused))))
        return self.shape_output(out), attn
