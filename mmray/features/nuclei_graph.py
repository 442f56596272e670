"""Per-tile nucleus statistics: counts, density, morphometry distributions and the nucleus graph.

:func:`tile_features` turns the per-nucleus table of one tile
(:func:`mmray.features.nuclei.measure_nuclei`) into one flat row whose
columns are :data:`TILE_FEATURES`::

    n_nuclei, n_nuclei_est                       segments, and nuclei counting clumps by area
    density_per_mm2                              n_nuclei_est per mm^2 of the tile's tissue
    <measure>_mean/_sd/_q10/_q50/_q90            for each measure in nuclei.MORPH
    graph_degree_mean, graph_degree_sd           Delaunay graph over nucleus centroids, edges
    graph_edge_um_mean, graph_edge_um_sd,        longer than max_edge_um dropped (they span
    graph_edge_um_q50                            background, not neighbouring cells)
    graph_clustering                             mean local clustering coefficient (triangles)

A tile with too few nuclei for a statistic has NaN there (0 for counts).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import Delaunay, QhullError

from mmray.features.nuclei import MORPH

QUANTILES = (0.1, 0.5, 0.9)
DIST_STATS = ("mean", "sd", "q10", "q50", "q90")
GRAPH = ("graph_degree_mean", "graph_degree_sd", "graph_edge_um_mean", "graph_edge_um_sd", "graph_edge_um_q50",
         "graph_clustering")
TILE_FEATURES = ("n_nuclei", "n_nuclei_est", "density_per_mm2") + tuple(f"{m}_{s}" for m in MORPH for s in DIST_STATS) + GRAPH


def nucleus_graph(yx_um: np.ndarray, *, max_edge_um: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """``(edges (E, 2) int, lengths (E,) um)`` of the Delaunay graph of (N, 2) centroids in micrometres."""
    n = len(yx_um)
    if n < 2:
        return np.zeros((0, 2), int), np.zeros(0)
    if n == 2:
        edges = np.array([[0, 1]])
    else:
        try:
            tri = Delaunay(yx_um).simplices
        except QhullError:  # all centroids on a line: chain them in order along it
            order = np.lexsort(yx_um.T[::-1])
            edges = np.column_stack([order[:-1], order[1:]])
        else:
            edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    length = np.linalg.norm(yx_um[edges[:, 0]] - yx_um[edges[:, 1]], axis=1)
    keep = length <= max_edge_um
    return edges[keep], length[keep]


def graph_stats(n: int, edges: np.ndarray, length: np.ndarray) -> list[float]:
    """:data:`GRAPH` values of a graph with ``n`` nodes."""
    if n < 2:
        return [np.nan] * len(GRAPH)
    adj = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    degree = np.asarray(adj.sum(axis=1)).ravel()
    triangles = np.asarray((adj @ adj).multiply(adj).sum(axis=1)).ravel() / 2.0  # per node
    pairs = degree * (degree - 1) / 2.0
    clustering = np.divide(triangles, pairs, out=np.zeros(n), where=pairs > 0)
    if len(length) == 0:
        return [float(degree.mean()), float(degree.std()), np.nan, np.nan, np.nan, float(clustering.mean())]
    return [float(degree.mean()), float(degree.std()), float(length.mean()), float(length.std()),
            float(np.median(length)), float(clustering.mean())]


def tile_features(nuclei: np.ndarray, *, mpp: float, tissue_mm2: float, counts: np.ndarray | None = None,
                  max_edge_um: float = 30.0) -> np.ndarray:
    """(len(TILE_FEATURES),) float64 of one tile; ``nuclei`` is (N, 2 + len(MORPH)) from measure_nuclei,
    ``counts`` (N,) the nuclei in each segment (:func:`mmray.features.nuclei.clump_counts`; default 1s)."""
    n = len(nuclei)
    n_est = float(np.sum(counts)) if counts is not None else float(n)
    out = [float(n), n_est, n_est / tissue_mm2 if tissue_mm2 > 0 else np.nan]
    for j in range(len(MORPH)):
        v = nuclei[:, 2 + j]
        if n == 0:
            out += [np.nan] * len(DIST_STATS)
            continue
        q = np.quantile(v, QUANTILES)
        out += [float(v.mean()), float(v.std()) if n > 1 else np.nan, *map(float, q)]
    edges, length = nucleus_graph(nuclei[:, :2] * mpp, max_edge_um=max_edge_um)
    out += graph_stats(n, edges, length)
    return np.asarray(out, np.float64)
