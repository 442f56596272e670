"""Tabular multi-modal models: single-modality baseline, early, late and attention fusion.

Every model takes a :class:`~mmray.models.batch.Batch` and returns ``[B]``
(``survival_cox``) or ``[B, n_out]``.  A modality masked for a patient never
reaches the output: inputs and encodings of masked slots are replaced (not
multiplied) by zeros, fusion weights and attention exclude them, and a
patient with no usable modality gets a learned constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mmray.errors import DataError
from mmray.models.batch import Batch
from mmray.models.blocks import TaskModel, keep, mlp, modality_dropout


class SingleModality(TaskModel):
    """MLP on one modality (``modality``); patients without it get a learned constant."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 modality: str | None = None, hidden: Sequence[int] = (32,), dropout: float = 0.3):
        if modality is None:
            if len(modality_dims) != 1:
                raise DataError(f"model 'single' needs modality=... (one of {sorted(modality_dims)}) "
                                f"when several modalities are given")
            modality = next(iter(modality_dims))
        if modality not in modality_dims:
            raise DataError(f"modality {modality!r} is not among the given modalities {sorted(modality_dims)}")
        super().__init__(task=task, modality_dims={modality: modality_dims[modality]}, n_out=n_out)
        self.modality = modality
        self.net = mlp(modality_dims[modality], list(hidden), n_out, dropout=dropout)
        self.missing = nn.Parameter(torch.zeros(n_out))

    def forward(self, batch: Batch) -> torch.Tensor:
        present = batch.present(self.modality)
        out = self.net(keep(batch.feature(self.modality), present))
        out = torch.where(present.unsqueeze(-1), out, self.missing.expand_as(out))
        return self.shape_output(out)


class _Encoders(nn.Module):
    def __init__(self, modality_dims: Mapping[str, int], enc_dim: int, dropout: float):
        super().__init__()
        self.names = tuple(modality_dims)
        self.enc = nn.ModuleDict({m: mlp(d, [enc_dim], None, dropout=dropout) for m, d in modality_dims.items()})

    def forward(self, batch: Batch, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per-modality encodings ``[B, enc_dim]``, zero where masked."""
        return [keep(self.enc[m](keep(batch.feature(m), mask[:, j])), mask[:, j]) for j, m in enumerate(self.names)]


class EarlyFusion(TaskModel):
    """Per-modality encoders, concatenated with the mask indicators, then an MLP."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 enc_dim: int = 32, hidden: Sequence[int] = (64,), dropout: float = 0.3,
                 modality_dropout: float = 0.0):
        super().__init__(task=task, modality_dims=modality_dims, n_out=n_out)
        self.p_modality_dropout = modality_dropout
        self.encoders = _Encoders(self.modality_dims, enc_dim, dropout)
        M = len(self.modality_dims)
        self.head = mlp(M * enc_dim + M, list(hidden), n_out, dropout=dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = modality_dropout(self.mask_of(batch), self.p_modality_dropout, training=self.training)
        h = torch.cat(self.encoders(batch, mask) + [mask.to(torch.float32)], dim=1)
        return self.shape_output(self.head(h))


class LateFusion(TaskModel):
    """Per-modality heads; outputs averaged with learned weights renormalised over present modalities."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 hidden: Sequence[int] = (32,), dropout: float = 0.3, modality_dropout: float = 0.0):
        super().__init__(task=task, modality_dims=modality_dims, n_out=n_out)
        self.p_modality_dropout = modality_dropout
        self.heads = nn.ModuleDict({m: mlp(d, list(hidden), n_out, dropout=dropout)
                                    for m, d in self.modality_dims.items()})
        self.weight_logits = nn.Parameter(torch.zeros(len(self.modality_dims)))
        self.missing = nn.Parameter(torch.zeros(n_out))

    def modality_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` combination weights: softmax of the learned logits over present modalities."""
        logits = self.weight_logits.expand(mask.shape).masked_fill(~mask, float("-inf"))
        logits = torch.where(mask.any(1, keepdim=True), logits, torch.zeros_like(logits))
        return torch.where(mask, torch.softmax(logits, dim=1), torch.zeros_like(logits))

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = modality_dropout(self.mask_of(batch), self.p_modality_dropout, training=self.training)
        outs = torch.stack([self.heads[m](keep(batch.feature(m), mask[:, j]))
                            for j, m in enumerate(self.modality_dims)], dim=1)  # [B, M, n_out]
        w = self.modality_weights(mask)
        fused = (w.unsqueeze(-1) * outs).sum(1)
        out = torch.where(mask.any(1, keepdim=True), fused, self.missing.expand_as(fused))
        return self.shape_output(out)


class AttentionFusion(TaskModel):
    """One token per modality (+ a learned modality embedding), transformer layers, mean over present tokens.

    Missing modalities are excluded with ``src_key_padding_mask``; during
    training each present modality is dropped with ``modality_dropout``
    (never all of a patient's).
    """

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 dim: int = 32, n_heads: int = 2, n_layers: int = 1, dropout: float = 0.2,
                 modality_dropout: float = 0.2):
        super().__init__(task=task, modality_dims=modality_dims, n_out=n_out)
        if dim % n_heads:
            raise DataError(f"attention_fusion: dim={dim} must be divisible by n_heads={n_heads}")
        self.p_modality_dropout = modality_dropout
        self.tokenizers = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim))
                                         for m, d in self.modality_dims.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modality_dims), dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.empty = nn.Parameter(torch.zeros(dim))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, n_out))

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = modality_dropout(self.mask_of(batch), self.p_modality_dropout, training=self.training)
        tokens = torch.stack([self.tokenizers[m](keep(batch.feature(m), mask[:, j]))
                              for j, m in enumerate(self.modality_dims)], dim=1)  # [B, M, dim]
        tokens = tokens + self.modality_embedding
        tokens = torch.where(mask.unsqueeze(-1), tokens, torch.zeros_like(tokens))
        none = ~mask.any(1)
        padding = ~mask & ~none.unsqueeze(1)  # a patient with nothing attends over zeros, then is replaced
        h = self.encoder(tokens, src_key_padding_mask=padding)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        pooled = torch.where(none.unsqueeze(-1), self.empty.expand_as(pooled), pooled)
        return self.shape_output(self.head(pooled))
