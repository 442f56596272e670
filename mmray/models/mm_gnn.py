"""``mm_gnn``: the multi-modal heterogeneous GNN (PyG ``HeteroConv`` of ``GATConv``), multi-task, with an
optional graph contrastive objective.

Each patient is its own graph (inductive: no edge between patients, so a
prediction never depends on who else is in the batch).  Its nodes are the
features of the fold's feature graph (:mod:`mmray.models.mm_graph`): gene
nodes carrying expression / mutation / copy-number values in three channels,
protein nodes, one node per clinical feature and one per imaging (radiomic,
slide) feature, linked by prior-knowledge edges (protein-protein
interactions, regulation, gene -> protein) and by correlation edges fitted on
the training fold.  Then:

1. **Node embeddings per type**: ``h0 = id_n + sum_c x_nc w_nc + sum_c p_nc u_nc``
   (a learned identity, the value and the presence of each channel with
   node-specific weights), LayerNorm.
2. **Intra-modality GAT stacks**: ``intra_layers`` rounds of one ``GATConv``
   per pair of node types (the relations between them merged, each edge's
   weight and relation kind as edge features), summed by ``HeteroConv``,
   each with a residual connection and LayerNorm.
3. **Modality tokens**: gated attention pooling over the nodes each input
   modality feeds (expression and mutations share gene nodes but pool their
   own), plus a linear read of the modality's values (a skip past the graph)
   and a learned modality embedding.
4. **Inter-modality fusion**: a patient query attends over the present
   modality tokens (cross-attention; its weights are the model's modality
   importance), then ``fusion_layers`` transformer layers over
   ``[patient; tokens]`` with key padding for missing modalities.
   ``fusion="mean"`` replaces both by the mean of the present tokens (the
   ablation without inter-modality fusion).
5. **Heads**: the primary task (survival risk, hazard logits or subtype
   logits) and, with ``tasks=[survival_cox, response, toxicity]``, one head
   per auxiliary task; :class:`~mmray.models.multitask.UncertaintyWeighting`
   combines the losses.

A missing modality contributes nothing: its values and presence flags are
zeroed with ``torch.where`` before they reach a node, its token is masked in
the attention, and a patient with no modality gets a learned constant.
``forward(batch)`` returns the primary output (what training, validation,
serving and the explain API use); ``forward(batch, heads=True)`` every
head's; ``embed(batch, augment=True)`` one augmented view (edge dropout and
feature noise) of the patient embeddings for contrastive pretraining
(:mod:`mmray.train.contrastive`), run before the supervised epochs when
``pretrain_epochs > 0``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch_geometric.nn import GATConv, HeteroConv

from mmray.errors import DataError
from mmray.models.batch import Batch
from mmray.models.blocks import TaskModel, keep, modality_dropout
from mmray.models.mm_graph import N_CHANNELS, check_spec, default_spec, merged_relations
from mmray.models.multitask import UncertaintyWeighting, check_tasks

FUSIONS = ("cross_attention", "mean")


class _NodeInput(nn.Module):
    """``[B, N, dim]`` initial embeddings of one node type from the modalities that feed it."""

    def __init__(self, n_nodes: int, n_channels: int, dim: int):
        super().__init__()
        self.n, self.c = n_nodes, n_channels
        self.identity = nn.Parameter(torch.randn(n_nodes, dim) * 0.1)
        self.value = nn.Parameter(torch.randn(n_nodes, n_channels, dim) * 0.1)
        self.presence = nn.Parameter(torch.zeros(n_nodes, n_channels, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], B: int) -> torch.Tensor:
        """``parts``: ``(values [B, d], present [B], flat positions [d])`` of each feeding modality."""
        dev = self.identity.device
        x = torch.zeros(B, self.n * self.c, device=dev)
        p = torch.zeros(B, self.n * self.c, device=dev)
        for vals, present, pos in parts:
            idx = pos.unsqueeze(0).expand(B, -1)
            x = x + torch.zeros_like(x).scatter(1, idx, vals)
            p = p + torch.zeros_like(p).scatter(1, idx, present.to(vals.dtype).unsqueeze(1).expand_as(vals))
        x, p = x.view(B, self.n, self.c), p.view(B, self.n, self.c)
        h = self.identity + torch.einsum("bnc,ncd->bnd", x, self.value) + torch.einsum("bnc,ncd->bnd", p, self.presence)
        return self.norm(h)


class _GatedPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018) over a subset of one node type's nodes."""

    def __init__(self, dim: int):
        super().__init__()
        self.v, self.u, self.w = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B, n, dim] -> [B, dim]
        a = torch.softmax(self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1), dim=1)
        return (a.unsqueeze(-1) * h).sum(1)


class MMGNN(TaskModel):
    """Multi-modal heterogeneous GNN (module doc)."""

    def __init__(self, *, task: str, modality_dims: Mapping[str, int], n_out: int, bag_dim: int | None = None,
                 dim: int = 32, n_heads: int = 2, intra_layers: int = 2, fusion: str = "cross_attention",
                 fusion_layers: int = 1, dropout: float = 0.2, modality_dropout: float = 0.1,
                 tasks: Sequence[str] = (), task_dims: Mapping[str, int] | None = None,
                 task_weighting: str = "uncertainty", pretrain_epochs: int = 0, pretrain_lr: float = 1e-3,
                 temperature: float = 0.1, edge_drop: float = 0.2, feature_noise: float = 0.1,
                 corr_threshold: float = 0.5, corr_top_k: int = 2, min_prior_score: float = 0.4,
                 graph: Mapping | None = None):
        # corr_threshold, corr_top_k, min_prior_score: how the fold's graph is built (mmray.train.fold_graph);
        # the model receives that graph ready-made as ``graph``.
        super().__init__(task=task, modality_dims=modality_dims, n_out=n_out)
        if dim % n_heads:
            raise DataError(f"mm_gnn: dim={dim} must be divisible by n_heads={n_heads}")
        if fusion not in FUSIONS:
            raise DataError(f"mm_gnn: fusion {fusion!r}; valid: {list(FUSIONS)}")
        self.tasks = check_tasks(tasks, task)
        self.task_dims = dict(task_dims or {})
        missing = [t for t in self.tasks[1:] if int(self.task_dims.get(t, 0)) < 1]
        if missing:
            raise DataError(f"mm_gnn: auxiliary task(s) {missing} need task_dims (classes / labels), "
                            f"e.g. task_dims={{'response': 3, 'toxicity': 2}}")
        self.fusion, self.p_modality_dropout = fusion, modality_dropout
        self.pretrain_epochs, self.pretrain_lr, self.temperature = int(pretrain_epochs), pretrain_lr, temperature
        self.edge_drop, self.feature_noise = edge_drop, feature_noise
        spec = check_spec(graph if graph is not None else default_spec(self.modality_dims), self.modality_dims)
        self.node_types = tuple(t for t, names in spec["nodes"].items() if names)
        self.n_nodes = {t: len(spec["nodes"][t]) for t in self.node_types}
        self.inputs = {m: spec["inputs"][m] for m in self.modality_dims}
        for m, inp in self.inputs.items():
            c = N_CHANNELS.get(inp["node"], 1)
            self.register_buffer(f"pos_{m}", torch.as_tensor([i * c + ch for i, ch in zip(inp["index"], inp["channel"])],
                                                               dtype=torch.long), persistent=False)
            self.register_buffer(f"nodes_{m}", torch.as_tensor(sorted(set(inp["index"])), dtype=torch.long),
                                 persistent=False)
        self.node_in = nn.ModuleDict({t: _NodeInput(self.n_nodes[t], N_CHANNELS.get(t, 1), dim)
                                      for t in self.node_types})
        self.edges = merged_relations(spec["edges"], self.n_nodes)
        self.n_edges = {"|".join(k): len(v) for k, v in self.edges.items()}
        self.intra_layers = intra_layers if self.edges else 0
        with warnings.catch_warnings():  # node types without incoming edges keep their embedding: by design
            warnings.filterwarnings("ignore", message=".*do not get updated during message passing.*")
            self.convs = nn.ModuleList(
                HeteroConv({rel: GATConv((dim, dim), dim // n_heads, heads=n_heads, edge_dim=e.n_features,
                                         add_self_loops=False, dropout=dropout) for rel, e in self.edges.items()},
                           aggr="sum")
                for _ in range(self.intra_layers))
        self.norms = nn.ModuleList(nn.ModuleDict({t: nn.LayerNorm(dim) for t in self.node_types})
                                   for _ in range(self.intra_layers))
        self.pools = nn.ModuleDict({m: _GatedPool(dim) for m in self.modality_dims})
        # the modality's values straight into its token (a skip past the graph): pooling normalises node
        # embeddings, so a plain linear read of the values (what attention fusion's tokens are) is kept too
        self.skips = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modality_dims), dim) * 0.02)
        self.token_norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.cross = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.fuser = nn.TransformerEncoder(layer, fusion_layers, enable_nested_tensor=False) if fusion_layers else None
        self.empty = nn.Parameter(torch.zeros(dim))
        self.drop = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({task: nn.Linear(dim, n_out)})
        for t in self.tasks[1:]:
            self.heads[t] = nn.Linear(dim, int(self.task_dims[t]))
        self.task_weights = UncertaintyWeighting(self.tasks, kind=task_weighting) if len(self.tasks) > 1 else None
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.last_attention: torch.Tensor | None = None  # [B, M] patient -> modality weights of the last forward

    # ------------------------------------------------------------------ graph part
    def node_embeddings(self, batch: Batch, *, augment: bool = False) -> dict[str, torch.Tensor]:
        """``{node type: [B, N_t, dim]}`` after the intra-modality GAT stack."""
        B = batch.size
        parts: dict[str, list] = {t: [] for t in self.node_types}
        for m, inp in self.inputs.items():
            present = batch.present(m)
            x = keep(batch.feature(m), present)
            if augment and self.feature_noise > 0:
                x = keep(x + self.feature_noise * torch.randn_like(x), present)
            parts[inp["node"]].append((x, present, getattr(self, f"pos_{m}")))
        h = {t: self.node_in[t](parts[t], B) for t in self.node_types}
        if not self.intra_layers:
            return h
        dim = next(iter(h.values())).shape[-1]
        dev = next(iter(h.values())).device
        index, attr = {}, {}
        for rel, e in self.edges.items():
            ei, ea = e.batched(B, dev)
            if augment and self.edge_drop > 0:
                kept = torch.rand(ei.shape[1], device=dev) >= self.edge_drop
                ei, ea = ei[:, kept], ea[kept]
            index[rel], attr[rel] = ei, ea
        flat = {t: v.reshape(B * self.n_nodes[t], dim) for t, v in h.items()}
        for conv, norms in zip(self.convs, self.norms):
            upd = conv(flat, index, edge_attr_dict=attr)
            # (dropout acts on the attention coefficients inside GATConv: cheaper than on every node vector)
            flat = {t: (norms[t](v + torch.relu(upd[t])) if t in upd else v) for t, v in flat.items()}
        return {t: v.view(B, self.n_nodes[t], dim) for t, v in flat.items()}

    def tokens(self, batch: Batch, *, augment: bool = False) -> torch.Tensor:
        """``[B, M, dim]`` modality tokens (zero where the modality is missing)."""
        h = self.node_embeddings(batch, augment=augment)
        mask = self.mask_of(batch)
        toks = [self.pools[m](h[inp["node"]][:, getattr(self, f"nodes_{m}")])
                + self.skips[m](keep(batch.feature(m), batch.present(m))) for m, inp in self.inputs.items()]
        tokens = self.token_norm(torch.stack(toks, 1) + self.modality_embedding)
        return torch.where(mask.unsqueeze(-1), tokens, torch.zeros_like(tokens))

    # ------------------------------------------------------------------ fusion
    def embed(self, batch: Batch, *, augment: bool = False) -> torch.Tensor:
        """``[B, dim]`` patient embeddings; ``augment`` draws one contrastive view."""
        mask = modality_dropout(self.mask_of(batch), self.p_modality_dropout, training=self.training and not augment)
        tokens = self.tokens(batch, augment=augment)
        tokens = torch.where(mask.unsqueeze(-1), tokens, torch.zeros_like(tokens))
        none = ~mask.any(1)
        if self.fusion == "mean":
            pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            self.last_attention = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)
        else:
            padding = ~mask & ~none.unsqueeze(1)  # a patient with nothing attends over zeros, then is replaced
            q = self.query.expand(tokens.shape[0], 1, -1)
            att, w = self.cross(q, tokens, tokens, key_padding_mask=padding, need_weights=True)
            self.last_attention = torch.where(mask, w.squeeze(1), torch.zeros_like(w.squeeze(1))).detach()
            patient = q + att
            if self.fuser is not None:
                seq = torch.cat([patient, tokens], 1)
                pad = torch.cat([torch.zeros_like(padding[:, :1]), padding], 1)
                seq = self.fuser(seq, src_key_padding_mask=pad)
                patient, tokens = seq[:, :1], torch.where(mask.unsqueeze(-1), seq[:, 1:], torch.zeros_like(tokens))
            # read out the patient token and the mean of the (fused) present modality tokens
            pooled = patient.squeeze(1) + tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.where(none.unsqueeze(-1), self.empty.expand_as(pooled), pooled)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Projection head of the contrastive objective."""
        return self.projection(z)

    def forward(self, batch: Batch, heads: bool = False):
        z = self.drop(self.out_norm(self.embed(batch)))
        if not heads:
            return self.shape_output(self.heads[self.task](z))
        out = {t: self.heads[t](z) for t in self.tasks}
        out[self.task] = self.shape_output(out[self.task])
        return out

    def modality_attention(self, batch: Batch) -> torch.Tensor:
        """``[B, M]`` cross-attention weight of each modality (0 where missing) in eval mode."""
        with torch.no_grad():
            self.embed(batch)
        return self.last_attention
