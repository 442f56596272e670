"""The feature graph of one training fold for ``mm_gnn``: prior-knowledge edges + fold-fitted correlations.

Nodes are the columns the fold's preprocessing kept (:class:`~mmray.train.preprocess.Preprocessor`):

* ``gene``: one node per gene symbol of the expression (channel 0),
  mutation (1) and copy-number (2) columns (``expression__MKI67``,
  ``mutations__TP53``, ``cnv__MYC``);
* ``protein``: one node per protein column; its gene comes from the
  ``proteins`` group's ``protein_genes`` (ingest) or the name itself;
* ``clinical``: one node per clinical feature; ``imaging``: one per radiomic
  and slide feature.

Edges (``"<src>|<relation>|<dst>"``, weight = score or ``|r|``):

* prior knowledge from the store's ``interactions`` table
  (:mod:`mmray.store.knowledge`): ``ppi`` between the genes and between the
  proteins of interacting symbols (both directions), ``regulates`` from
  regulator to target gene, ``codes_for`` from a gene to a protein, other
  types between genes as undirected ``other``; interactions scored below
  ``min_score`` are left out;
* gene -> protein by symbol (``codes_for``) and back (``coded_by``), always;
* correlation edges (``corr``) between genes (expression), between clinical
  features and between imaging features of one modality: Pearson
  ``|r| >= corr_threshold`` over the **fit rows of the training fold that have
  the modality**, at most ``corr_top_k`` partners per node.  Nothing of the
  validation or test rows enters: :func:`build_fold_graph` takes only the
  prepared fit rows, and the graph is stored with the fold (the model's
  hyperparameters, hence every checkpoint, and ``graph_edges`` in the results).

Every patient gets a copy of this graph with its own values (inductive).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mmray.models.mm_graph import GENE_CHANNELS, node_type_of
from mmray.train.preprocess import Prepared, Preprocessor

log = logging.getLogger(__name__)
UNDIRECTED = ("ppi", "other")


def _column(name: str) -> tuple[str, str]:
    """``expression__MKI67`` -> ``("expression", "MKI67")``."""
    group, _, col = str(name).partition("__")
    return group, col or group


def node_layout(pre: Preprocessor, *, protein_genes: Mapping[str, str] | None = None) -> tuple[dict, dict, dict]:
    """``(nodes, inputs, gene_of_protein)`` of the graph spec for the fold's kept columns."""
    nodes: dict[str, list[str]] = {"gene": [], "protein": [], "clinical": [], "imaging": []}
    where: dict[tuple[str, str], int] = {}
    inputs, gene_of = {}, {}

    def node(t: str, name: str) -> int:
        key = (t, name)
        if key not in where:
            where[key] = len(nodes.setdefault(t, []))
            nodes[t].append(name)
        return where[key]

    for m in pre.modalities_:
        t = node_type_of(m)
        index, channel = [], []
        for f in pre.blocks_[m].feature_names_:
            group, col = _column(f)
            if t == "gene":
                index.append(node(t, col))
                channel.append(GENE_CHANNELS.get(group, 0))
            else:
                index.append(node(t, col if t == "protein" else f))
                channel.append(0)
                if t == "protein":
                    from mmray.ingest.tables_proteins import gene_of_protein

                    gene_of[col] = (protein_genes or {}).get(col) or gene_of_protein(col)
        inputs[m] = {"node": t, "index": index, "channel": channel}
    return nodes, inputs, gene_of


def correlation_edges(x: np.ndarray, *, threshold: float, top_k: int) -> list[tuple[int, int, float]]:
    """Undirected ``(i, j, |r|)`` for columns of ``x`` ``[n, d]`` with ``|r| >= threshold`` (top-k per node)."""
    if x.shape[0] < 3 or x.shape[1] < 2:
        return []
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(x, rowvar=False)
    r = np.nan_to_num(np.abs(r), nan=0.0)
    np.fill_diagonal(r, 0.0)
    keep = set()
    for i in range(r.shape[0]):
        order = np.argsort(-r[i], kind="stable")[:top_k]
        keep.update((min(i, j), max(i, j)) for j in order if r[i, j] >= threshold)
    return [(i, j, round(float(r[i, j]), 4)) for i, j in sorted(keep)]


def build_fold_graph(pre: Preprocessor, fit: Prepared, *, interactions: pd.DataFrame | None = None,
                     protein_genes: Mapping[str, str] | None = None, corr_threshold: float = 0.5,
                     corr_top_k: int = 2, min_score: float = 0.4) -> dict:
    """The graph spec (:mod:`mmray.models.mm_graph`) of a fold from its fitted preprocessing and fit rows."""
    nodes, inputs, gene_of = node_layout(pre, protein_genes=protein_genes)
    edges: dict[str, dict[str, list]] = {}

    def add(src_t: str, rel: str, dst_t: str, i: int, j: int, w: float, *, both: bool) -> None:
        for a, b in ((i, j), (j, i)) if both else ((i, j),):
            e = edges.setdefault(f"{src_t}|{rel}|{dst_t}", {"src": [], "dst": [], "weight": []})
            e["src"].append(int(a))
            e["dst"].append(int(b))
            e["weight"].append(float(w))

    gene_ix = {g: i for i, g in enumerate(nodes["gene"])}
    prot_ix = {p: i for i, p in enumerate(nodes["protein"])}
    proteins_of: dict[str, list[int]] = {}
    for p, i in prot_ix.items():
        proteins_of.setdefault(gene_of.get(p, p), []).append(i)
    linked = set()
    if interactions is not None and len(interactions):
        seen = set()
        for s, t, kind, score in interactions[["source", "target", "type", "score"]].itertuples(index=False):
            w = 1.0 if score is None or not np.isfinite(score) else float(score)
            if w < min_score:
                continue
            kind = kind if kind in ("ppi", "regulates", "codes_for") else "other"
            if kind == "codes_for":
                for i in ([gene_ix[s]] if s in gene_ix else []):
                    for j in proteins_of.get(t, []) + ([prot_ix[t]] if t in prot_ix else []):
                        if (i, j) not in linked:
                            linked.add((i, j))
                            add("gene", "codes_for", "protein", i, j, w, both=False)
                            add("protein", "coded_by", "gene", j, i, w, both=False)
                continue
            if s in gene_ix and t in gene_ix and (kind, s, t) not in seen:
                seen.add((kind, s, t))
                add("gene", kind, "gene", gene_ix[s], gene_ix[t], w, both=kind in UNDIRECTED)
            if kind == "ppi":
                src = proteins_of.get(s, []) + ([prot_ix[s]] if s in prot_ix and s not in proteins_of else [])
                dst = proteins_of.get(t, []) + ([prot_ix[t]] if t in prot_ix and t not in proteins_of else [])
                for i in src:
                    for j in dst:
                        if i != j and ("pp", min(i, j), max(i, j)) not in seen:
                            seen.add(("pp", min(i, j), max(i, j)))
                            add("protein", "ppi", "protein", i, j, w, both=True)
    for g, i in gene_ix.items():  # gene -> protein by symbol
        for j in proteins_of.get(g, []):
            if (i, j) not in linked:
                linked.add((i, j))
                add("gene", "codes_for", "protein", i, j, 1.0, both=False)
                add("protein", "coded_by", "gene", j, i, 1.0, both=False)
    for j, m in enumerate(fit.modalities):
        t = node_type_of(m)
        if t == "protein" or m == "mutations_cnv":
            continue  # proteins: prior edges; binary calls: no Pearson correlation
        rows = fit.mask[:, j]
        idx = inputs[m]["index"]
        for a, b, w in correlation_edges(fit.features[m][rows], threshold=corr_threshold, top_k=corr_top_k):
            if idx[a] != idx[b]:
                add(t, "corr", t, idx[a], idx[b], w, both=True)
    log.info("fold graph: %s nodes; %s", {t: len(v) for t, v in nodes.items() if v},
             {k: len(v["src"]) for k, v in sorted(edges.items())})
    return {"nodes": nodes, "inputs": inputs, "edges": edges, "protein_genes": gene_of}


def edge_table(graph: Mapping, *, fold: int) -> pd.DataFrame:
    """The graph's edges as rows ``fold, relation, source, target, weight`` (node names), for the results."""
    rows = []
    for key, e in graph["edges"].items():
        s_t, rel, d_t = key.split("|")
        names_s, names_d = graph["nodes"][s_t], graph["nodes"][d_t]
        rows += [{"fold": fold, "relation": key, "source": names_s[a], "target": names_d[b], "weight": w}
                 for a, b, w in zip(e["src"], e["dst"], e["weight"])]
    return pd.DataFrame(rows, columns=["fold", "relation", "source", "target", "weight"])
