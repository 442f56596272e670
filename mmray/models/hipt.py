"""HIPT (Chen et al., CVPR 2022): the 4096-level ViT over tile embeddings, and the slide-level MIL model.

* :class:`FeatureGridViT` (HIPT's ViT-4K-256): a region is a ``G x G`` grid
  of 256-level tile embeddings (``[B, h, w, in_dim]``; zeros where a tile
  had no tissue); each cell is projected (``phi``: Linear + GELU) to
  ``embed_dim`` tokens, a CLS token and learned 2D position embeddings
  (bicubically resized for the smaller crops DINO takes on the grid) are
  added, and pre-norm transformer blocks (timm's, with stochastic depth) give
  the CLS vector: ``[B, embed_dim]`` (HIPT: 192-d, 6 blocks, 6 heads).
* :class:`HIPT` (registered as ``hipt``): a patient's region vectors (the
  ``wsi_regions_hipt`` bag, all slides) -> ``global_phi`` (Linear, ReLU,
  dropout) -> a transformer over the patient's regions (padding masked) ->
  gated attention pooling (softmax per patient) -> ``global_rho`` -> a
  survival (Cox risk or discrete-time hazards, as HIPT/MCAT use with 4 bins)
  or subtype head.  ``forward_with_attention`` returns the attention of every
  region row, which the report draws over the slides.  A patient without
  regions gets a learned constant output.

Plain PyTorch (+ timm's transformer block); no Ray.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmray.errors import DataError
from mmray.models.batch import BAG, Batch
from mmray.models.blocks import TaskModel, check_task
from mmray.models.porpoise import GatedAttentionMIL


class FeatureGridViT(nn.Module):
    """ViT over a grid of feature vectors: ``[B, h, w, in_dim] -> [B, embed_dim]`` (module doc)."""

    def __init__(self, in_dim: int, *, embed_dim: int = 192, depth: int = 6, heads: int = 6, mlp_ratio: float = 4.0,
                 grid: int = 16, drop_path_rate: float = 0.0, dropout: float = 0.0):
        from timm.models.vision_transformer import Block

        super().__init__()
        self.in_dim, self.grid = in_dim, grid
        self.num_features = self.embed_dim = embed_dim
        self.phi = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.GELU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([Block(embed_dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r,
                                           norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        g = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, g.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] != self.in_dim:
            raise DataError(f"FeatureGridViT expects [B, h, w, {self.in_dim}] grids, got {tuple(x.shape)}")
        b, h, w, _ = x.shape
        tokens = self.phi(x.reshape(b, h * w, -1))
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], 1) + self._pos(h, w)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]


class HIPT(TaskModel):
    """HIPT's slide-level model over region vectors (module doc); needs the bag only."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 dim: int = 192, n_layers: int = 2, n_heads: int = 3, dropout: float = 0.25):
        if not bag_dim:
            raise DataError("model 'hipt' needs the region bag: pass bag_dim (region vector width)")
        if dim % n_heads:
            raise DataError(f"model 'hipt': dim {dim} must be a multiple of n_heads {n_heads}")
        if modality_dims:
            raise DataError(f"model 'hipt' is slide-only (region bags): give it a modality set of [tiles], not "
                            f"{[BAG, *modality_dims]}")
        nn.Module.__init__(self)  # TaskModel's checks want tabular modalities; HIPT has none
        check_task(task, n_out)
        self.task, self.n_out, self.bag_dim = task, n_out, bag_dim
        self.modality_dims: dict[str, int] = {}
        self.modalities = (BAG,)
        self.global_phi = nn.Sequential(nn.Linear(bag_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=dim, dropout=dropout, activation="relu",
                                           batch_first=True)
        self.global_transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.pool = GatedAttentionMIL(dim, dim, dropout=dropout)
        self.head = nn.Linear(dim, n_out)
        self.missing = nn.Parameter(torch.zeros(n_out))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_with_attention(batch)[0]

    def forward_with_attention(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, attention [N_total])``; attention sums to 1 over each patient's regions."""
        if batch.bag_feats is None or batch.bag_index is None:
            raise DataError("hipt needs bag_feats and bag_index in the batch (collate with modality 'tiles' "
                            "over the wsi_regions_hipt group)")
        B, index = batch.size, batch.bag_index
        n = torch.bincount(index, minlength=B) if index.numel() else torch.zeros(B, dtype=torch.long,
                                                                                device=index.device)
        has = batch.present(BAG) & (n > 0)
        sel = has[index]
        feats, idx = batch.bag_feats[sel], index[sel]
        h = self.global_phi(feats)
        if h.shape[0]:
            h = self._contextualise(h, idx, B)
        pooled, attn_sel = self.pool(h, idx, B)
        attn = torch.zeros(index.shape[0], dtype=h.dtype, device=h.device)
        attn = attn.masked_scatter(sel, attn_sel) if attn_sel.numel() else attn
        out = torch.where(has.unsqueeze(-1), self.head(pooled), self.missing.expand(B, -1))
        return self.shape_output(out), attn

    def _contextualise(self, h: torch.Tensor, idx: torch.Tensor, B: int) -> torch.Tensor:
        """The transformer over each patient's regions: pad to ``[B, L, dim]``, mask the padding, unpad."""
        order = torch.argsort(idx, stable=True)
        counts = torch.bincount(idx, minlength=B)
        L = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(idx), device=h.device) - starts[idx[order]]
        padded = h.new_zeros(B, L, h.shape[1])
        padded[idx[order], pos] = h[order]
        pad_mask = torch.arange(L, device=h.device)[None, :] >= counts[:, None]
        pad_mask[counts == 0, 0] = False  # an empty row still needs one key (its output is dropped)
        out = self.global_transformer(padded, src_key_padding_mask=pad_mask)
        res = torch.empty_like(h)
        res[order] = out[idx[order], pos]
        return res


def default_cells(grid: int, *, of16: int) -> int:
    """HIPT's crop sizes on a 16 x 16 grid (14 global, 6 local), scaled to a ``grid`` x ``grid`` one."""
    return max(1, min(grid, int(math.floor(of16 * grid / 16 + 0.5))))
