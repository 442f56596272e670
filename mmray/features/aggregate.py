"""Slide and patient aggregates of tile embeddings: mean pooling and extremum encoding.

Extremum encoding keeps, per embedding dimension, the maximum and minimum over
a slide's tiles together with the level-0 coordinates of the tile that gave
each (and, for a patient, the slide), so any aggregate feature traces back to
a place on a slide.  Ties go to the first tile in reading order (``y``, then
``x``) and, across slides, to the first slide in ``slide_id`` order.

Pure numpy; the flat column layout (:func:`aggregate_columns`) is what the
``wsi_slide`` and ``wsi_patient`` feature groups hold::

    <scale>_mean_<i>, <scale>_max_<i>, <scale>_min_<i>    float32, i = 0..dim-1
    <scale>_argmax_x, <scale>_argmax_y, <scale>_argmin_x, <scale>_argmin_y   list<int64> (dim)
    <scale>_argmax_slide, <scale>_argmin_slide            list<string> (dim; patient level)
    n_<scale>s                                            int64

with ``scale`` in ``tile`` and ``region``; a scale without rows has NaN values
and -1 coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

STATS = ("mean", "max", "min")
ARGS = ("argmax_x", "argmax_y", "argmin_x", "argmin_y")


@dataclass(frozen=True)
class Pooled:
    """Aggregates of N embeddings of dimension D (all arrays shape (D,))."""

    n: int
    mean: np.ndarray  # float32
    max: np.ndarray
    min: np.ndarray
    argmax_x: np.ndarray  # int64 level-0 coordinates of the tile giving each max / min
    argmax_y: np.ndarray
    argmin_x: np.ndarray
    argmin_y: np.ndarray
    argmax_slide: np.ndarray | None = None  # object (D,) slide ids, patient level only
    argmin_slide: np.ndarray | None = None


def empty(dim: int, *, with_slide: bool = False) -> Pooled:
    nan = np.full(dim, np.nan, np.float32)
    neg = np.full(dim, -1, np.int64)
    slide = np.full(dim, "", object) if with_slide else None
    return Pooled(0, nan, nan.copy(), nan.copy(), neg, neg.copy(), neg.copy(), neg.copy(), slide,
                  None if slide is None else slide.copy())


def pool(embeddings: np.ndarray, x: np.ndarray, y: np.ndarray) -> Pooled:
    """Mean, max and min over rows of (N, D) ``embeddings``, with the (x, y) of each max and min."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    if not len(x) == len(y) == emb.shape[0]:
        raise ValueError(f"x, y and embeddings need one entry per tile: {len(x)}, {len(y)}, {emb.shape[0]}")
    if emb.shape[0] == 0:
        return empty(emb.shape[1])
    order = np.lexsort((x, y))  # reading order, so ties resolve the same way whatever the row order
    emb, x, y = emb[order], x[order], y[order]
    hi, lo = emb.argmax(axis=0), emb.argmin(axis=0)
    cols = np.arange(emb.shape[1])
    return Pooled(n=emb.shape[0], mean=emb.mean(axis=0, dtype=np.float64).astype(np.float32),
                  max=emb[hi, cols], min=emb[lo, cols], argmax_x=x[hi], argmax_y=y[hi], argmin_x=x[lo],
                  argmin_y=y[lo])


def combine(parts: dict[str, Pooled], dim: int) -> Pooled:
    """Patient-level aggregates from per-slide ones (exact: max of maxes, tile-weighted mean)."""
    names = sorted(s for s, p in parts.items() if p.n > 0)
    if not names:
        return empty(dim, with_slide=True)
    ps = [parts[s] for s in names]
    n = np.array([p.n for p in ps], np.float64)
    mean = (np.stack([p.mean for p in ps]).astype(np.float64) * n[:, None]).sum(axis=0) / n.sum()
    maxs, mins = np.stack([p.max for p in ps]), np.stack([p.min for p in ps])
    hi, lo = maxs.argmax(axis=0), mins.argmin(axis=0)
    cols = np.arange(dim)
    ids = np.array(names, dtype=object)

    def pick(field: str, which: np.ndarray) -> np.ndarray:
        return np.stack([getattr(p, field) for p in ps])[which, cols]

    return Pooled(n=int(n.sum()), mean=mean.astype(np.float32), max=maxs[hi, cols], min=mins[lo, cols],
                  argmax_x=pick("argmax_x", hi), argmax_y=pick("argmax_y", hi), argmin_x=pick("argmin_x", lo),
                  argmin_y=pick("argmin_y", lo), argmax_slide=ids[hi], argmin_slide=ids[lo])


def aggregate_columns(rows: list[dict[str, Pooled]], *, dim: int, scales=("tile", "region")) -> dict[str, pa.Array]:
    """Flat Arrow columns for R rows, each a ``{scale: Pooled}`` (see the module docstring)."""
    cols: dict[str, pa.Array] = {}
    for scale in scales:
        pooled = [r.get(scale) or empty(dim) for r in rows]
        cols[f"n_{scale}s"] = pa.array([p.n for p in pooled], pa.int64())
        for stat in STATS:
            mat = np.stack([getattr(p, stat) for p in pooled]).astype(np.float32) if pooled else \
                np.zeros((0, dim), np.float32)
            for i in range(dim):
                cols[f"{scale}_{stat}_{i}"] = pa.array(mat[:, i], pa.float32())
        for arg in ARGS:
            cols[f"{scale}_{arg}"] = pa.array([getattr(p, arg).tolist() for p in pooled], pa.list_(pa.int64()))
        if any(p.argmax_slide is not None for p in pooled):
            for arg in ("argmax_slide", "argmin_slide"):
                values = [list(getattr(p, arg)) if getattr(p, arg) is not None else [""] * dim for p in pooled]
                cols[f"{scale}_{arg}"] = pa.array(values, pa.list_(pa.string()))
    return cols


def pooled_from_table(table: pa.Table, *, scale: str, dim: int) -> list[Pooled]:
    """The :class:`Pooled` of each row of a table written from :func:`aggregate_columns`."""
    mats = {stat: np.column_stack([table.column(f"{scale}_{stat}_{i}").to_numpy(zero_copy_only=False)
                                   for i in range(dim)]).astype(np.float32) for stat in STATS}
    args = {arg: table.column(f"{scale}_{arg}").to_pylist() for arg in ARGS}
    counts = table.column(f"n_{scale}s").to_pylist()
    return [Pooled(n=int(counts[r]), mean=mats["mean"][r], max=mats["max"][r], min=mats["min"][r],
                   **{arg: np.asarray(args[arg][r], np.int64) for arg in ARGS})
            for r in range(table.num_rows)]
