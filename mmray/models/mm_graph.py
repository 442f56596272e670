"""The feature graph ``mm_gnn`` runs on: node types, where each input column goes, typed edges.

A *graph spec* is a JSON-able dict (it travels in the model's hyperparameters,
so every checkpoint carries the graph it was trained with)::

    {"nodes":  {"gene": ["MKI67", ...], "protein": ["Ki-67", ...], "clinical": [...], "imaging": [...]},
     "inputs": {"expression": {"node": "gene", "index": [i_0, ...], "channel": [0, ...]},   # one per column
                "mutations_cnv": {"node": "gene", "index": [...], "channel": [1, 2, ...]}, ...},
     "edges":  {"gene|ppi|gene": {"src": [...], "dst": [...], "weight": [...]}, ...}}

Node types: ``gene`` (expression, mutation and copy-number columns of the
same gene land on one node, in channels 0/1/2), ``protein``, ``clinical``
(one node per clinical feature) and ``imaging`` (radiomic and slide
features).  Edge keys are ``"<src type>|<relation>|<dst type>"``; edges are
directed (an undirected relation is listed both ways).  The spec is built
per training fold by :mod:`mmray.train.fold_graph` (prior knowledge + the
fold's correlation edges); without one, :func:`default_spec` gives every
column its own node and no edge.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mmray.errors import DataError

NODE_TYPES = ("gene", "protein", "clinical", "imaging")
NODE_OF = {"clinical": "clinical", "expression": "gene", "mutations_cnv": "gene", "proteins": "protein",
           "radiomics": "imaging", "slide": "imaging"}
GENE_CHANNELS = {"expression": 0, "mutations": 1, "cnv": 2}
N_CHANNELS = {"gene": 3, "protein": 1, "clinical": 1, "imaging": 1}


def node_type_of(modality: str) -> str:
    return NODE_OF.get(modality, modality)


def default_spec(modality_dims: Mapping[str, int]) -> dict:
    """Every column its own node of its modality's type (mutation/CNV columns in channel 1), no edges."""
    nodes: dict[str, list[str]] = {}
    inputs = {}
    for m, d in modality_dims.items():
        t = node_type_of(m)
        start = len(nodes.setdefault(t, []))
        nodes[t] += [f"{m}:{j}" for j in range(d)]
        inputs[m] = {"node": t, "index": list(range(start, start + d)),
                     "channel": [1 if m == "mutations_cnv" else 0] * d}
    return {"nodes": nodes, "inputs": inputs, "edges": {}}


def check_spec(spec: Mapping, modality_dims: Mapping[str, int]) -> dict:
    """Validate a graph spec against the model's input widths; returns it as a plain dict."""
    nodes, inputs, edges = dict(spec.get("nodes", {})), dict(spec.get("inputs", {})), dict(spec.get("edges", {}))
    problems = []
    for m, d in modality_dims.items():
        if m not in inputs:
            problems.append(f"modality {m!r} has no 'inputs' entry")
            continue
        inp = inputs[m]
        t = inp.get("node")
        if t not in nodes:
            problems.append(f"modality {m!r} maps to unknown node type {t!r}")
            continue
        if len(inp.get("index", ())) != d or len(inp.get("channel", ())) != d:
            problems.append(f"modality {m!r}: {d} columns but {len(inp.get('index', ()))} node indices / "
                            f"{len(inp.get('channel', ()))} channels")
        elif d and (max(inp["index"]) >= len(nodes[t]) or min(inp["index"]) < 0):
            problems.append(f"modality {m!r}: node index out of range for {len(nodes[t])} {t} nodes")
        elif d and max(inp["channel"]) >= N_CHANNELS.get(t, 1):
            problems.append(f"modality {m!r}: channel {max(inp['channel'])} but {t} nodes have "
                            f"{N_CHANNELS.get(t, 1)}")
    for key, e in edges.items():
        parts = key.split("|")
        if len(parts) != 3 or parts[0] not in nodes or parts[2] not in nodes:
            problems.append(f"edge key {key!r} is not '<src type>|<relation>|<dst type>' over {sorted(nodes)}")
            continue
        n_src, n_dst = len(nodes[parts[0]]), len(nodes[parts[2]])
        if len(e["src"]) != len(e["dst"]) or len(e.get("weight", e["src"])) != len(e["src"]):
            problems.append(f"edges {key!r}: src, dst and weight lengths differ")
        elif e["src"] and (max(e["src"]) >= n_src or max(e["dst"]) >= n_dst or min(e["src"]) < 0
                           or min(e["dst"]) < 0):
            problems.append(f"edges {key!r}: node index out of range")
    if problems:
        raise DataError("mm_gnn graph spec: " + "; ".join(problems))
    return {"nodes": nodes, "inputs": inputs, "edges": edges}


class BatchedEdges:
    """One relation's edges replicated over ``B`` per-patient copies of the feature graph (no cross edges).

    ``attr`` ``[E, F]``: edge features (the weight, and the kind of edge when relations are merged).
    """

    def __init__(self, src: list[int], dst: list[int], attr, *, n_src: int, n_dst: int):
        self.src = torch.as_tensor(src, dtype=torch.long)
        self.dst = torch.as_tensor(dst, dtype=torch.long)
        attr = torch.as_tensor(attr, dtype=torch.float32)
        self.attr = attr.unsqueeze(1) if attr.ndim == 1 else attr
        self.n_src, self.n_dst = n_src, n_dst
        self._cache: dict = {}

    def __len__(self) -> int:
        return int(self.src.numel())

    @property
    def n_features(self) -> int:
        return int(self.attr.shape[1])

    def batched(self, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index [2, B*E], edge_attr [B*E, F])``: copy ``b`` offset by ``b * n`` on each side."""
        key = (B, str(device))
        if key not in self._cache:
            off = torch.arange(B, device=device).repeat_interleave(len(self))
            src = self.src.to(device).repeat(B) + off * self.n_src
            dst = self.dst.to(device).repeat(B) + off * self.n_dst
            attr = self.attr.to(device).repeat(B, 1)
            if len(self._cache) >= 4:  # training, last partial batch, validation, test sizes
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (torch.stack([src, dst]), attr)
        return self._cache[key]


def merged_relations(spec_edges: Mapping, n_nodes: Mapping[str, int]) -> dict[tuple[str, str, str], BatchedEdges]:
    """One relation per (source type, target type): the spec's relations between two node types merged, each
    edge's features ``[weight, one-hot of its relation]`` (so attention still tells a PPI from a correlation).

    Fewer, larger message-passing calls: on CPU the per-call overhead of many small relations dominates.
    Keys are ``(src, "+".join(relations), dst)``.
    """
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for key, e in sorted(spec_edges.items()):
        if e["src"]:
            s, rel, d = key.split("|")
            groups.setdefault((s, d), []).append((rel, e))
    out = {}
    for (s, d), rels in groups.items():
        src, dst, attr = [], [], []
        for k, (rel, e) in enumerate(rels):
            w = e.get("weight") or [1.0] * len(e["src"])
            src += list(e["src"])
            dst += list(e["dst"])
            attr += [[float(x)] + [1.0 if j == k else 0.0 for j in range(len(rels))] for x in w]
        out[(s, "+".join(r for r, _ in rels), d)] = BatchedEdges(src, dst, attr, n_src=n_nodes[s], n_dst=n_nodes[d])
    return out
