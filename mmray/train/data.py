"""Prepared fold data as columns, as Ray Datasets, and back into :class:`~mmray.models.batch.Batch` es.

One row per patient.  Columns (``M`` modalities of the model)::

    patient_id          string
    x__<modality>       tensor [d_m] float32   (zeros where the modality is missing)
    m__<modality>       bool                   (the modality mask)
    time_days, event    float64, bool          (survival labels)
    subtype             int64                  (class index; -1 when unknown)
    weight              float32                (1 real row, 0 padding)
    bag_ids             list<string>           (MIL models: the patient's slide ids)
    y__response         int64                  (multi-task models: response class; -1 unknown)
    y__toxicity         tensor [T] float32     (multi-task models: toxicity labels; NaN unknown)

For MIL models a Ray Data stage (:func:`read_tiles`: a :class:`TileReader`
per worker process) reads each patient's tiles from the store's tile bag group
(``wsi_tiles``: one bag per ``slide_id``, column ``embedding``) as the rows
stream by, adding ``bag`` (``[n_tiles, d]`` per patient), so an epoch never
holds more than a few batches of tiles; :func:`to_batches` turns numpy batches
into ``Batch`` es with :func:`mmray.models.batch.collate`, which concatenates
the variable-size bags without padding.

Training sets are padded with ``weight == 0`` rows to a multiple of the
worker count, so Ray's equal split gives every worker the same number of
rows (and of batches) without dropping a real patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from mmray.errors import DataError
from mmray.models.batch import BAG, Batch, collate
from mmray.train.preprocess import Prepared

TILE_GROUP = "wsi_tiles"
TILE_COLUMN = "embedding"


def prepared_columns(prep: Prepared, *, bag_ids: Sequence | None = None, pad_to_multiple: int = 1,
                     seed: int = 0, extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The column dict of ``prep`` (module doc), padded with zero-weight copies of random rows.

    ``extra``: more per-row columns (``y__<label>`` of multi-task models), ``[n, ...]`` each.
    """
    n = len(prep.patient_ids)
    cols: dict[str, np.ndarray] = {"patient_id": np.asarray(prep.patient_ids, dtype=object)}
    for j, m in enumerate(prep.modalities):
        cols[f"x__{m}"] = np.asarray(prep.features[m], dtype=np.float32)
        cols[f"m__{m}"] = np.asarray(prep.mask[:, j], dtype=bool)
    cols["time_days"] = np.asarray(prep.time_days if prep.time_days is not None else np.ones(n), dtype=np.float64)
    cols["event"] = np.asarray(prep.event if prep.event is not None else np.zeros(n), dtype=bool)
    cols["subtype"] = np.asarray(prep.subtype if prep.subtype is not None else np.full(n, -1), dtype=np.int64)
    cols["weight"] = np.ones(n, dtype=np.float32)
    if bag_ids is not None:
        if len(bag_ids) != n:
            raise DataError(f"bag_ids has {len(bag_ids)} entries for {n} patients")
        cols["bag_ids"] = np.asarray([list(b) if b is not None else [] for b in bag_ids] + [None],
                                     dtype=object)[:-1]
    for k, v in (extra or {}).items():
        if len(v) != n:
            raise DataError(f"column {k!r} has {len(v)} rows for {n} patients")
        cols[k] = np.asarray(v)
    pad = (-n) % max(1, pad_to_multiple)
    if pad:
        pick = np.random.default_rng(seed).integers(0, n, size=pad)
        cols = {k: np.concatenate([v, v[pick]]) for k, v in cols.items()}
        cols["weight"][n:] = 0.0
    return cols


def to_arrow(cols: Mapping[str, np.ndarray]) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    arrays = {}
    for k, v in cols.items():
        if k.startswith("x__") or np.ndim(v) > 1:
            arrays[k] = ArrowTensorArray.from_numpy(np.ascontiguousarray(v))
        elif k == "bag_ids":
            arrays[k] = pa.array([list(map(str, b)) for b in v], type=pa.list_(pa.string()))
        elif k == "patient_id":
            arrays[k] = pa.array([str(p) for p in v], type=pa.string())
        else:
            arrays[k] = pa.array(v)
    return pa.table(arrays)


MIL_ROWS_PER_BLOCK = 8  # patients per block of a dataset that reads tile bags (one reader batch)


def to_dataset(cols: Mapping[str, np.ndarray], *, tiles: dict | None = None,
               rows_per_block: int = MIL_ROWS_PER_BLOCK):
    """A ``ray.data.Dataset`` of a column dict; ``tiles`` (:class:`TileReader` keywords) adds the bags.

    With tiles the patients go in blocks of ``rows_per_block``, so bag reading streams block by block
    (and in parallel) instead of one task reading the whole epoch's tiles, and a block holds at most
    ``rows_per_block`` patients' tile samples (8 x 4096 tiles x 384-d: 50 MB).
    """
    import ray.data

    table = to_arrow(cols)
    if tiles is None:
        return ray.data.from_arrow(table)
    blocks = [table.slice(i, rows_per_block) for i in range(0, max(1, table.num_rows), rows_per_block)]
    return with_tiles(ray.data.from_arrow(blocks), tiles, readers=min(2, len(blocks)))


_READERS: dict = {}


class TileReader:
    """Read a sample of each patient's tiles (all its slides) from a bag group of the store.

    ``max_tiles`` caps a patient's bag (a seeded, per-patient sample), as attention-MIL training commonly
    does for memory; the sample is drawn before anything but the filter columns is read and only the drawn
    rows are kept as the row groups stream past (:class:`mmray.store.bag_sample.BagSampler`), so a reader
    holds one patient's sample and one record batch, whatever the slides' size.  ``tile_filter``
    (``{version, threshold}`` of ``wsi_tumour``; ``"auto"``: the one the store's ``wsi_slide`` aggregates
    were made with, if any) keeps only the tiles the tumour filter passes, as the aggregates do; the sample
    is drawn from those.  ``extra_columns`` (e.g. ``("x", "y", "region_id")`` for models that use tile
    positions) come along as ``bag__<column>``.  Used as a Ray Data stage through :func:`read_tiles` (a
    task-based ``map_batches``: worker processes keep one reader, with its bag index, per store version).
    """

    def __init__(self, *, store: str, group: str = TILE_GROUP, version: str | None = None,
                 column: str = TILE_COLUMN, scale: str | None = "tile", max_tiles: int | None = 4096, seed: int = 0,
                 tile_filter: dict | str | None = "auto", extra_columns: Sequence[str] = ()):
        from mmray.store import FeatureStore
        from mmray.store.bag_sample import BagSampler

        self.store = FeatureStore(store)
        self.group, self.column, self.max_tiles, self.seed = group, column, max_tiles, seed
        self.extra_columns = tuple(extra_columns)
        self.sampler = BagSampler(self.store, group, version=version)
        self.version = self.sampler.version
        names = self.sampler.schema.names
        self.scale = scale if "scale" in names else None  # wsi_tiles: 256-px tiles + regions
        if tile_filter == "auto":
            slides = self.store.latest("wsi_slide") if group == TILE_GROUP else None
            tile_filter = self.store.manifest("wsi_slide", version=slides)["params"].get("tile_filter") \
                if slides else None
        self.tile_filter = tile_filter if {"x", "y"} <= set(names) else None
        self._kept: tuple[str, set | None] | None = None  # the bag being sampled: bags are read one at a time

    def _keeps(self, bag, batch) -> np.ndarray:
        """Which rows of a record batch of ``bag`` the tumour-tile filter keeps (all when it never scored it)."""
        from mmray.ingest.wsi_tumour import kept_tiles

        bag = str(bag)
        if self._kept is None or self._kept[0] != bag:
            self._kept = (bag, kept_tiles(self.store, bag, version=self.tile_filter["version"],
                                          threshold=self.tile_filter["threshold"]))
        kept, n = self._kept[1], batch.num_rows
        if kept is None:
            return np.ones(n, bool)
        names = batch.schema.names
        scales = batch.column("scale").to_numpy(zero_copy_only=False).astype(str) if "scale" in names \
            else np.full(n, "tile")
        xs = batch.column("x").to_numpy(zero_copy_only=False).astype(int)
        ys = batch.column("y").to_numpy(zero_copy_only=False).astype(int)
        return np.fromiter(((s, int(x), int(y)) in kept for s, x, y in zip(scales, xs, ys)), bool, count=n)

    def read_sample(self, patient_id: str, bag_ids) -> dict[str, np.ndarray] | None:
        """``{column: array}`` of the patient's sampled rows (None: no tile)."""
        filt = {}
        if self.tile_filter:
            filt = {"row_filter": self._keeps, "filter_columns": ("x", "y") + (("scale",) if self.scale else ())}
        return self.sampler.sample(bag_ids if bag_ids is not None else [], columns=[self.column, *self.extra_columns],
                                   key=str(patient_id), max_rows=self.max_tiles, seed=self.seed,
                                   where={"scale": self.scale} if self.scale else None, **filt)

    def read(self, patient_id: str, bag_ids) -> np.ndarray | None:
        """``[n_tiles, d]`` float32 of the patient's sampled tiles (None: no tile)."""
        got = self.read_sample(patient_id, bag_ids)
        return None if got is None else got[self.column]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples = [self.read_sample(p, ids) for p, ids in zip(batch["patient_id"], batch["bag_ids"])]
        dim = next((s[self.column].shape[1] for s in samples if s is not None), None)
        if dim is None:
            dim = self._dim()
        out = {k: v for k, v in batch.items() if k != "bag_ids"}  # read: the ids are not needed downstream
        out["bag"] = _objects([s[self.column] if s is not None else np.zeros((0, dim), np.float32) for s in samples])
        for c in self.extra_columns:
            out[f"bag__{c}"] = _objects([s[c] if s is not None else np.zeros(0) for s in samples])
        return out

    def _dim(self) -> int:
        first = self.store.bags(self.group, version=self.version)["bag_id"].iloc[0]
        return len(self.store.read_bag(self.group, first, version=self.version,
                                           columns=[self.column])[self.column].iloc[0])


def _objects(arrays: list) -> np.ndarray:
    """A 1-d object array holding ``arrays`` (numpy would otherwise stack equal-shaped ones)."""
    return np.asarray(arrays + [None], dtype=object)[:-1]


def read_tiles(batch: dict[str, np.ndarray], **tiles) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: add ``bag`` (``[n_tiles, d]`` per patient) to a batch."""
    key = tuple(sorted((k, str(v)) for k, v in tiles.items()))
    reader = _READERS.get(key)
    if reader is None:
        reader = _READERS[key] = TileReader(**tiles)
    return reader(batch)


def with_tiles(ds, tiles: dict, *, readers: int = 2):
    """``ds`` plus a streaming stage that reads the tile bags (see :func:`read_tiles`).

    The readers are I/O tasks that ask for no CPU (``num_cpus=0``, at most
    ``readers`` at a time): training workers hold the cluster's CPUs, and a
    reader waiting for a CPU they hold would stall the epoch for ever.
    """
    import ray.data

    return ds.map_batches(read_tiles, fn_kwargs=tiles, batch_size=8, batch_format="numpy", num_cpus=0,
                          compute=ray.data.TaskPoolStrategy(size=readers))


def to_batch(cols: Mapping[str, np.ndarray], *, modalities: Sequence[str], dims: Mapping[str, int],
             bag_dim: int | None = None) -> tuple[Batch, torch.Tensor]:
    """A numpy column batch -> ``(Batch, weight [B])`` with the existing :func:`collate`."""
    n = len(cols["patient_id"])
    tab = [m for m in modalities if m != BAG]
    samples = []
    for i in range(n):
        s = {"features": {m: (cols[f"x__{m}"][i] if cols[f"m__{m}"][i] else None) for m in tab},
             "patient_id": str(cols["patient_id"][i]), "time_days": float(cols["time_days"][i]),
             "event": bool(cols["event"][i]), "subtype": int(cols["subtype"][i])}
        if BAG in modalities:
            s["bag"] = cols["bag"][i] if "bag" in cols else None
        if "y__response" in cols:
            s["response"] = int(cols["y__response"][i])
        if "y__toxicity" in cols:
            s["toxicity"] = cols["y__toxicity"][i]
        samples.append(s)
    batch = collate(samples, modalities=modalities, dims=dims, bag_dim=bag_dim)
    return batch, torch.from_numpy(np.array(cols["weight"], dtype=np.float32))


def iter_columns(cols: Mapping[str, np.ndarray], *, batch_size: int, shuffle_seed: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """In-memory numpy batches of a column dict (optionally shuffled with ``shuffle_seed``)."""
    n = len(cols["patient_id"])
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        yield {k: v[idx] for k, v in cols.items()}


def batches(source, *, batch_size: int, modalities: Sequence[str], dims: Mapping[str, int],
            bag_dim: int | None = None, shuffle_seed: int | None = None) -> Iterable[tuple[Batch, torch.Tensor]]:
    """``(Batch, weight)`` pairs from a Ray Dataset / DataIterator shard or an in-memory column dict."""
    if isinstance(source, Mapping):
        it = iter_columns(source, batch_size=batch_size, shuffle_seed=shuffle_seed)
    else:
        kw = {}
        if shuffle_seed is not None:
            # A MIL row carries its bag (up to max_tiles x d floats, MBs): a buffer of a few batches, with the
            # blocks (MIL_ROWS_PER_BLOCK patients each) in a seeded random order instead, else the buffer
            # (256 rows) would hold a large cohort's whole training set.
            mil = bag_dim is not None
            kw = {"local_shuffle_buffer_size": 2 * batch_size if mil else max(2 * batch_size, 256),
                  "local_shuffle_seed": shuffle_seed}
            if mil and hasattr(source, "randomize_block_order"):
                source = source.randomize_block_order(seed=shuffle_seed)
        it = source.iter_batches(batch_size=batch_size, batch_format="numpy", **kw)
    for cols in it:
        yield to_batch(cols, modalities=modalities, dims=dims, bag_dim=bag_dim)


def bag_ids_of(table: pd.DataFrame, group: str = TILE_GROUP) -> list | None:
    """Per-row slide ids from a joined training table (``<group>__bag_ids``), or None if not joined."""
    col = f"{group}__bag_ids"
    if col not in table.columns:
        return None
    return [list(v) if v is not None and not (isinstance(v, float) and np.isnan(v)) else [] for v in table[col]]
