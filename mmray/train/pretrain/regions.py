"""The 4096 level of HIPT: DINO over grids of tile embeddings, then one vector per region (``wsi_regions_hipt``).

A region (``wsi.region_px``, 4096 px in HIPT) holds ``G x G`` tiles
(``G = region_px / tile_px``, 16 in HIPT).  :func:`region_grids` reads a
slide's bag from ``wsi_tiles`` (the tile embeddings of the freshly pretrained
256-level encoder) and lays each region's tile embeddings on its grid by
level-0 position; cells without a tissue tile stay zero.  :class:`GridDinoTask`
is the :class:`~mmray.train.pretrain.loop.DinoTask` of this level: a
:class:`~mmray.models.hipt.FeatureGridViT` backbone (ViT-4K-256) and crops
taken on the grid (HIPT: 2 global crops of 14 x 14 and 8 local of 6 x 6 cells
of 16 x 16, with horizontal flips; scaled for other grids).  After DINO, every
region is embedded by the teacher and written as a bag group keyed by
``slide_id``: ``region_id, x, y, size_l0, tile_px`` (= region_px), ``mpp``,
``n_tiles``, ``encoder_id``, ``embedding`` (``embed_dim`` floats): the input of
the ``hipt`` model.  The same tile embeddings also feed the probe (held-out
patients' regions against the label).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from mmray import uri as uri_mod
from mmray.errors import DataError
from mmray.models.hipt import FeatureGridViT, default_cells
from mmray.train.pretrain.config import REGION_GROUP
from mmray.train.pretrain.loop import DinoTask
from mmray.train.pretrain.probe import probe_scores

log = logging.getLogger("mmray.pretrain")
TILES = "wsi_tiles"
META = ("patient_id", "event_time", "region_id", "x", "y", "size_l0", "tile_px", "mpp", "n_tiles")


def region_grids(frame: pd.DataFrame, *, min_tiles: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """``(grids [R, G, G, D] float32, region rows)`` of one slide's ``wsi_tiles`` bag (module doc)."""
    regions = frame[frame["scale"] == "region"]
    tiles = frame[(frame["scale"] == "tile") & (frame["region_id"] >= 0)]
    if regions.empty or tiles.empty:
        return np.zeros((0, 1, 1, 1), np.float32), regions.iloc[:0]
    tile_l0 = int(tiles["size_l0"].iloc[0])
    region_l0 = int(regions["size_l0"].iloc[0])
    g = max(1, region_l0 // tile_l0)
    emb = np.stack(tiles["embedding"].to_numpy()).astype(np.float32)
    d = emb.shape[1]
    pos = {int(r): i for i, r in enumerate(regions["region_id"])}
    grids = np.zeros((len(regions), g, g, d), np.float32)
    counts = np.zeros(len(regions), np.int64)
    rx, ry = regions["x"].to_numpy(), regions["y"].to_numpy()
    for j, (rid, tx, ty) in enumerate(zip(tiles["region_id"], tiles["x"], tiles["y"])):
        i = pos.get(int(rid))
        if i is None:
            continue
        row, col = (int(ty) - int(ry[i])) // tile_l0, (int(tx) - int(rx[i])) // tile_l0
        if 0 <= row < g and 0 <= col < g:
            grids[i, row, col] = emb[j]
            counts[i] += 1
    keep = counts >= min_tiles
    meta = regions.assign(n_tiles=counts, tile_px=regions["tile_px"].astype(np.int32))[keep]
    return grids[keep], meta.reset_index(drop=True)


class GridDinoTask(DinoTask):
    """DINO on ``[G, G, D]`` grids of tile embeddings (module doc)."""

    name = "regions"

    def __init__(self, *, in_dim: int, grid: int, embed_dim: int, depth: int, heads: int, global_cells: int,
                 local_cells: int, n_global: int = 2, n_local: int = 8, probe=None, seed: int = 0):
        self.in_dim, self.grid, self.embed_dim, self.depth, self.heads = in_dim, grid, embed_dim, depth, heads
        self.global_cells, self.local_cells = global_cells, local_cells
        self.n_global, self.n_local, self.probe, self.seed = n_global, n_local, probe, seed

    def build_backbone(self, *, drop_path_rate: float = 0.0):
        m = FeatureGridViT(self.in_dim, embed_dim=self.embed_dim, depth=self.depth, heads=self.heads, grid=self.grid,
                           drop_path_rate=drop_path_rate)
        return m, self.embed_dim

    def views(self, batch, *, generator):
        x = torch.from_numpy(np.ascontiguousarray(batch["grid"])).float()  # [B, G, G, D]
        sizes = [self.global_cells] * self.n_global + [self.local_cells] * self.n_local
        return [crop_grid(x, size=s, generator=generator) for s in sizes]

    def evaluate(self, backbone, *, device):
        if self.probe is None or len(self.probe) == 0:
            return {}
        x = torch.from_numpy(self.probe.inputs).float()
        feats = torch.cat([backbone(x[s:s + 256].to(device)).float().cpu() for s in range(0, len(x), 256)]).numpy()
        return probe_scores(feats, self.probe.labels, self.probe.groups, seed=self.seed)

    def describe(self) -> dict:
        return {"task": self.name, "in_dim": self.in_dim, "grid": self.grid, "embed_dim": self.embed_dim,
                "depth": self.depth, "heads": self.heads, "global_cells": self.global_cells,
                "local_cells": self.local_cells, "probe_rows": 0 if self.probe is None else len(self.probe)}


def crop_grid(x: torch.Tensor, *, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``size x size`` crop of each grid of ``x [B, G, G, D]``, flipped left-right with p 0.5."""
    b, g = x.shape[0], x.shape[1]
    size = min(size, g)
    oy = torch.randint(0, g - size + 1, (b,), generator=generator)
    ox = torch.randint(0, g - size + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    ar = torch.arange(size)
    rows = (oy[:, None] + ar[None, :])[:, :, None].expand(b, size, size)
    cols = (ox[:, None] + ar[None, :])
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :].expand(b, size, size)
    return x[torch.arange(b)[:, None, None], rows, cols]


def read_slide_grids(batch: dict[str, np.ndarray], *, store: str, version: str, min_tiles: int,
                     shape: tuple[int, int] = (1, 1)) -> dict:
    """Ray Data stage: slide ids -> one row per region: ``grid`` and its metadata (``slide_id`` ...).

    ``shape``: ``(G, D)``, the grid of a batch without regions (every block keeps one schema)."""
    from mmray.store import FeatureStore

    st = FeatureStore(store)
    out: dict[str, list] = {k: [] for k in ("grid", "slide_id", *META)}
    cols = ["patient_id", "event_time", "scale", "x", "y", "region_id", "size_l0", "tile_px", "mpp", "embedding"]
    for sid in batch["slide_id"]:
        frame = st.read_bag(TILES, str(sid), version=version, columns=cols)
        grids, meta = region_grids(frame, min_tiles=min_tiles)
        for i in range(len(grids)):
            out["grid"].append(grids[i])
            out["slide_id"].append(str(sid))
            for k in META:
                out[k].append(meta[k].iloc[i])
    if not out["grid"]:
        g, d = shape
        kinds = {"patient_id": object, "event_time": object, "mpp": np.float64}
        empty = {k: np.zeros(0, kinds.get(k, np.int64)) for k in META}
        return {"grid": np.zeros((0, g, g, d), np.float32), "slide_id": np.zeros(0, object), **empty}
    kinds = {"slide_id": object, "patient_id": object, "event_time": object, "mpp": np.float64}
    res = {k: np.asarray(v, dtype=kinds.get(k, np.int64)) for k, v in out.items() if k != "grid"}
    res["grid"] = np.stack(out["grid"])
    return res


def _grid_shape(store, version: str) -> tuple[int, int]:
    """``(G, D)`` from the first slide of ``wsi_tiles@version`` that has regions."""
    for sid in store.bag_ids(TILES, version=version):
        grids, _ = region_grids(store.read_bag(TILES, sid, version=version))
        if len(grids):
            return grids.shape[1], grids.shape[3]
    raise DataError(f"{TILES}@{version} holds no regions: set wsi.region_px to a multiple of wsi.tile_px (HIPT: "
                    f"4096 with 256-px tiles) and embed the slides again")


def run_regions(cfg, *, store, tile_encoder_id: str, output: str, tracking: dict) -> dict:
    """Train the 4096 level on ``wsi_tiles`` (which must hold ``tile_encoder_id``'s embeddings) and write
    :data:`~mmray.train.pretrain.config.REGION_GROUP`; returns what it did (for ``pretrain.json``)."""
    import ray.data

    from mmray.config import config_hash
    from mmray.registry.encoders import EpochLogger
    from mmray.train.pretrain.loop import DinoRunSpec, fit_dino, iters_per_epoch
    from mmray.train.pretrain.tile_task import ProbeSet
    from mmray.train.pretrain.tiles_data import choose_probe_slides

    rc = cfg.region
    version = store.latest(TILES)
    enc = store.manifest(TILES, version=version)["params"].get("embed_key", {}).get("encoder_id")
    if enc != tile_encoder_id:
        raise DataError(f"{TILES}@{version} was embedded with {enc}, not the pretrained {tile_encoder_id}; embed the "
                        f"slides first (pretrain embed=true)")
    key = config_hash({"tiles": tile_encoder_id, "version": version, "region": asdict(rc)})[:16]
    prev = store.latest(REGION_GROUP)
    if prev and store.manifest(REGION_GROUP, version=prev)["params"].get("key") == key and not cfg.force:
        log.info("pretrain: %s@%s already holds these region embeddings", REGION_GROUP, prev)
        return {"key": key, "groups": {}, "skipped": True, "version": prev}
    grid, dim = _grid_shape(store, version)
    slides = store.bags(TILES, version=version)
    labels = None
    if cfg.probe.enabled and store.latest(cfg.probe.labels_group):
        lab = store.read_table(cfg.probe.labels_group)
        if cfg.probe.label in lab:
            lab = lab[lab[cfg.probe.label].notna()]
            labels = dict(zip(lab["patient_id"].astype(str), lab[cfg.probe.label].astype(str)))
    pid = dict(zip(slides["bag_id"].astype(str), slides["patient_id"].astype(str)))
    probe_ids = choose_probe_slides(pid, labels, n=cfg.probe.slides, seed=cfg.data.seed) if labels else []
    train_ids = [s for s in pid if s not in set(probe_ids)]
    kw = {"store": store.uri, "version": version, "min_tiles": rc.min_tiles, "shape": (grid, dim)}

    def grids_of(ids):
        ds = ray.data.from_items([{"slide_id": s} for s in ids], override_num_blocks=max(1, min(len(ids), 64)))
        return ds.map_batches(read_slide_grids, batch_size=8, batch_format="numpy", fn_kwargs=kw)

    probe = None
    if probe_ids:
        rows = [b for b in grids_of(probe_ids).iter_batches(batch_size=None, batch_format="numpy")]
        rows = [b for b in rows if len(b["grid"])]
        if rows:
            g = np.concatenate([b["grid"] for b in rows])
            p = np.concatenate([b["patient_id"] for b in rows]).astype(str)
            probe = ProbeSet(g, np.array([labels[x] for x in p]), p, label_name=cfg.probe.label)
    train = grids_of(train_ids).materialize() if cfg.data.cache else grids_of(train_ids)
    n = train.count()
    d = rc.dino
    task = GridDinoTask(in_dim=dim, grid=grid, embed_dim=rc.embed_dim, depth=rc.depth, heads=rc.heads,
                        global_cells=rc.global_cells or default_cells(grid, of16=14),
                        local_cells=rc.local_cells or default_cells(grid, of16=6), n_global=d.global_crops_number,
                        n_local=d.local_crops_number, probe=probe, seed=d.seed)
    on_epoch = EpochLogger(tracking["tracking_uri"], tracking["run_id"], prefix="region_") if tracking else None
    spec = DinoRunSpec(task=task, dino=d, iters_per_epoch=iters_per_epoch(n, batch_size=d.batch_size,
                                                                          workers=cfg.train.workers),
                       world_size=cfg.train.workers, shuffle_buffer_rows=4 * d.batch_size, on_epoch=on_epoch,
                       name=f"pretrain {cfg.name} (4096 level)")
    log.info("pretrain: 4096 level, DINO over %d region grid(s) of %dx%d x %d-d tile embeddings", n, grid, grid, dim)
    from pathlib import Path

    workdir = Path(cfg.workdir or (uri_mod.join(output, "runs") if not uri_mod.is_s3(output)
                                   else Path("mmray_work") / f"{cfg.name}-regions"))
    fit = fit_dino(spec, train=train, run_dir=workdir / "regions", executor=cfg.train.executor,
                   workers=cfg.train.workers, use_gpu=cfg.train.use_gpu, cpus_per_worker=cfg.train.cpus_per_worker,
                   max_failures=cfg.train.max_failures, keep=cfg.train.keep_checkpoints,
                   threads=cfg.train.threads_per_worker)
    state = fit.load_state()
    sd = {k[len("backbone."):]: v for k, v in state["teacher"].items() if k.startswith("backbone.")}
    buf = io.BytesIO()
    torch.save({"teacher": sd, "mmray": {"backbone": "vit4k", "in_dim": dim, "grid": grid, **asdict(rc)}}, buf)
    blob = buf.getvalue()
    uri_mod.write_bytes(uri_mod.join(output, "region_encoder.pt"), blob)
    region_id = f"vit4k-{rc.embed_dim}@sha256:{hashlib.sha256(blob).hexdigest()}"
    backbone = FeatureGridViT(dim, embed_dim=rc.embed_dim, depth=rc.depth, heads=rc.heads, grid=grid)
    backbone.load_state_dict(sd)
    new = write_region_group(store, backbone, slide_ids=list(pid), version=version, key=key, encoder_id=region_id,
                             tile_encoder_id=tile_encoder_id, min_tiles=rc.min_tiles)
    return {"key": key, "encoder_id": region_id, "history": fit.history, "n_regions": n, "grid": grid,
            "groups": {REGION_GROUP: new}, "encoder_uri": uri_mod.join(output, "region_encoder.pt")}


def write_region_group(store, backbone: torch.nn.Module, *, slide_ids: list[str], version: str, key: str,
                       encoder_id: str, tile_encoder_id: str, min_tiles: int = 1) -> str:
    """Embed every region of ``slide_ids`` (``wsi_tiles@version``) with ``backbone``; a new version of
    :data:`REGION_GROUP`, one part per slide; returns the version."""
    backbone.eval()
    params = {"key": key, "encoder_id": encoder_id, "tile_encoder_id": tile_encoder_id, "tiles_version": version}
    sources = [{"uri": f"{TILES}@{version}", "etag": tile_encoder_id}]
    with store.open_version(REGION_GROUP, kind="bag", bag_key="slide_id", params=params, sources=sources) as w:
        for sid in slide_ids:
            got = read_slide_grids({"slide_id": np.array([sid], object)}, store=store.uri, version=version,
                                   min_tiles=min_tiles)
            if not len(got["grid"]):
                continue
            with torch.inference_mode():
                emb = backbone(torch.from_numpy(got["grid"]).float()).numpy().astype(np.float32)
            n, d = emb.shape
            cols = {"slide_id": pa.array([sid] * n, pa.string()),
                    "patient_id": pa.array([str(p) for p in got["patient_id"]], pa.string()),
                    "event_time": pa.array(list(got["event_time"])),
                    **{k: pa.array(np.asarray(got[k]).astype(np.int64)) for k in ("region_id", "x", "y", "size_l0",
                                                                                    "n_tiles")},
                    "tile_px": pa.array(np.asarray(got["tile_px"]).astype(np.int32)),
                    "mpp": pa.array(np.asarray(got["mpp"]).astype(np.float64)),
                    "encoder_id": pa.array([encoder_id] * n, pa.string()),
                    "embedding": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * d),
                                                          pa.array(emb.ravel(), pa.float32()))}
            w.write_part(pa.table(cols))
    return w.version

