"""Per-tile attention of a fitted attention-MIL model (PORPOISE) on its held-out patients, for slide heatmaps.

After a fold is fitted, every test-fold patient's tiles are read from the
store's tile bag group *with* their level-0 coordinates, run through
``model.forward_with_attention`` together with the patient's prepared
tabular features, and returned as one row per tile::

    patient_id, slide_id, scale, x, y, size_l0, attention, fold

The attention of a patient sums to 1 over all its tiles (all its slides).
Every tile of the bag is used, not the ``max_tiles`` training sample: a
heatmap should cover the whole slide, and attention pooling is defined for
bags of any size.  Only the tile scale is read when the group has scales
(as training does).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from mmray.train.data import TILE_COLUMN, to_batch

COLUMNS = ["patient_id", "slide_id", "scale", "x", "y", "size_l0", "attention", "fold"]


def _read_patient_tiles(sampler, bag_ids, names: set[str]) -> tuple[pd.DataFrame, np.ndarray | None]:
    """All of a patient's tile rows (every slide): positions, and embeddings as one ``(n, d)`` array
    (streamed by :class:`mmray.store.bag_sample.BagSampler`: no per-row lists)."""
    want = [c for c in ("slide_id", "x", "y", "tile_px", "size_l0") if c in names]
    got = sampler.sample(list(bag_ids or []), columns=[*want, TILE_COLUMN], key="attention",
                         where={"scale": "tile"} if "scale" in names else None)
    if got is None:
        return pd.DataFrame(columns=[*want, "scale"]), None
    frame = pd.DataFrame({c: got[c] for c in want})
    frame["scale"] = "tile"
    if "size_l0" not in frame:  # tiles read at level 0: their level-0 size is their pixel size
        frame["size_l0"] = frame.get("tile_px", np.nan)
    return frame, got[TILE_COLUMN]


def tile_attention(model: torch.nn.Module, cols: Mapping[str, np.ndarray], *, store: str, group: str,
                   dims: Mapping[str, int], bag_dim: int, fold: int, batch_size: int = 1) -> pd.DataFrame:
    """Attention per tile for the patients of ``cols`` (a test-fold column dict with ``bag_ids``).

    ``batch_size`` patients go through the model at once with *all* their tiles (one by default: a real
    patient may have 60,000 tiles, so memory is one patient's bag and its activations).
    """
    from mmray.store import FeatureStore
    from mmray.store.bag_sample import BagSampler

    sampler = BagSampler(FeatureStore(store), group)
    names = set(sampler.schema.names)
    real = np.flatnonzero(np.asarray(cols["weight"]) > 0)  # padding rows are copies: skip them
    out = []
    model.eval()
    for start in range(0, len(real), batch_size):
        idx = real[start:start + batch_size]
        sub = {k: np.asarray(v)[idx] for k, v in cols.items()}
        read = [_read_patient_tiles(sampler, ids, names) for ids in sub["bag_ids"]]
        tiles = [t for t, _ in read]
        bags = [e if e is not None else np.zeros((0, bag_dim), np.float32) for _, e in read]
        sub["bag"] = np.asarray(bags + [None], dtype=object)[:-1]
        batch, _ = to_batch(sub, modalities=model.modalities, dims=dims, bag_dim=bag_dim)
        with torch.inference_mode():
            _, attn = model.forward_with_attention(batch)
        attn = attn.detach().cpu().numpy()
        index = batch.bag_index.cpu().numpy()
        for i, (pid, t) in enumerate(zip(sub["patient_id"], tiles)):
            if not len(t):
                continue
            rows = t[["slide_id", "scale", "x", "y", "size_l0"]].copy()
            rows.insert(0, "patient_id", str(pid))
            rows["attention"] = attn[index == i]
            rows["fold"] = fold
            out.append(rows)
    if not out:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.concat(out, ignore_index=True)[COLUMNS]
    return frame.astype({"x": np.int64, "y": np.int64, "attention": np.float64})
