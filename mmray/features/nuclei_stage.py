"""The Ray Data nuclei stage: slides -> tissue tiles -> nucleus morphometry and graphs, one row per tile.

::

    from_items(slides)                      one row per slide
      .map_batches(plan_nuclei_batch)       the WSI tile plan (same grid, same tissue threshold as wsi_tiles),
                                            tiles only, a seeded sample of at most max_tiles_per_slide
      .repartition(batch_size)
      .map_batches(nuclei_batch)            CPU tasks: read each tile's level-0 footprint at nuclei.target_mpp,
                                            segment (mmray.features.nuclei), tile statistics and the nucleus
                                            graph (mmray.features.nuclei_graph) -> Arrow rows
      -> TileEmbeddingSink("wsi_nuclei")    failed slides dropped whole, others carried forward on resume

Reading and segmenting happen in one task, so pixels never travel through
the object store; tiles are read at the nuclei resolution (0.5 um/px by
default), not the embedding resolution, because at the coarse resolutions
the encoder uses (2 um/px in the demo) a nucleus is two or three pixels wide.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mmray.errors import InputError
from mmray.features.nuclei import NucleiParams, clump_counts, nuclei_of_tile
from mmray.features.nuclei_graph import TILE_FEATURES, tile_features
from mmray.features.stain import normalise_numpy
from mmray.features.tile_pipeline import SLIDE_KEYS, Source, plan_columns, slide_items
from mmray.features.tiling import PlanLimits, TilingSpec, read_plan, read_tile
from mmray.ingest import slide_resolution, slide_source

KEYS = ("slide_id", "patient_id", "event_time")


@dataclass(frozen=True)
class NucleiConfig:
    """The ``wsi.nuclei`` section: nucleus segmentation, morphometry and graphs per tissue tile."""

    enabled: bool = False
    target_mpp: float = 0.5  # resolution tiles are segmented at (um/px); nuclei need <= ~0.5
    max_tiles_per_slide: int = 64  # seeded sample of each slide's tissue tiles (0: every tile)
    max_edge_um: float = 30.0  # nucleus-graph edges longer than this span background, not neighbours
    crop_px: int = 64  # nucleus crop size at target_mpp (crops are centred on the stored centroids)
    batch_size: int = 16  # tiles per task
    num_cpus: float = 1.0  # per task
    concurrency: int | None = None  # tasks at once (default: as many as CPUs allow)
    seed: int = 0  # tile sample
    segmentation: NucleiParams = field(default_factory=NucleiParams)

    def validate(self):
        if self.target_mpp <= 0 or self.max_edge_um <= 0 or self.num_cpus <= 0:
            yield ("", "target_mpp, max_edge_um and num_cpus must be positive")
        if self.max_tiles_per_slide < 0:
            yield ("max_tiles_per_slide", f"must be >= 0 (0: every tile), got {self.max_tiles_per_slide}")
        if self.crop_px < 8 or self.batch_size < 1:
            yield ("", "crop_px must be at least 8 and batch_size at least 1")

    def key(self) -> dict:
        """What makes two nuclei runs of one slide the same (resume compares this)."""
        import dataclasses

        out = dataclasses.asdict(self)
        for k in ("enabled", "batch_size", "num_cpus", "concurrency"):
            out.pop(k)
        return out


def sample_tiles(slide_id: str, n: int, *, max_tiles: int, seed: int) -> np.ndarray:
    """Sorted row indices of at most ``max_tiles`` of a slide's ``n`` tiles (seeded by the slide id)."""
    if max_tiles <= 0 or n <= max_tiles:
        return np.arange(n)
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{slide_id}".encode()).digest()[:8], "little")
    return np.sort(np.random.default_rng(digest).choice(n, size=max_tiles, replace=False))


def plan_nuclei_batch(batch: dict[str, np.ndarray], *, spec: TilingSpec, source: Source, cfg: NucleiConfig,
                      limits: PlanLimits = PlanLimits(), progress=None) -> dict[str, np.ndarray]:
    """Ray Data stage: slides -> their sampled tissue tiles (plus ``mpp_l0``); a failed slide is one row with
    its ``error``."""
    parts = []
    for i in range(len(batch["slide_id"])):
        slide = {k: batch[k][i] for k in SLIDE_KEYS if k in batch}
        cols = plan_columns(slide, spec=spec, source=source, limits=limits)
        mpp_l0 = np.nan
        if not cols["error"][0]:
            given = slide.get("mpp")
            mpp_l0 = slide_resolution.slide_mpp(source.handle(slide["uri"]), name=slide["slide_id"],
                                                mpp_override=spec.mpp_override,
                                                manifest_mpp=None if given is None or np.isnan(given) else float(given),
                                                mpp_range=limits.mpp_range)
            tiles = np.flatnonzero(cols["scale"] == "tile")
            keep = tiles[sample_tiles(slide["slide_id"], len(tiles), max_tiles=cfg.max_tiles_per_slide,
                                      seed=cfg.seed)]
            cols = {k: v[keep] for k, v in cols.items()}
        cols["mpp_l0"] = np.full(len(cols["x"]), mpp_l0, np.float64)
        parts.append(cols)
        if progress is not None:
            error = cols["error"][0]
            progress.planned.remote(slide["slide_id"], 0 if error else len(cols["x"]), error)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _tile_row(handle, *, x: int, y: int, size_l0: int, mpp_l0: float, cfg: NucleiConfig,
              stain: dict | None = None, slide_stain: np.ndarray | None = None):
    """``(features, tissue_mm2, centroids (N, 2) level-0 x/y, areas um2)`` of one tile; with ``stain``
    (``{method, reference, io, beta}``) the tile is first normalised from its slide's ``slide_stain``."""
    out_px = max(16, int(round(size_l0 * mpp_l0 / cfg.target_mpp)))
    level, read_px = read_plan(handle.level_downsamples, extent_l0=size_l0, out_px=out_px)
    rgb = read_tile(handle, x=x, y=y, level=level, read_px=read_px, out_px=out_px)
    if stain and slide_stain is not None:
        rgb = normalise_numpy(rgb[None], slide_stain[None], stain["reference"], method=stain["method"],
                              io=stain["io"], beta=stain["beta"])[0]
    mpp = size_l0 * mpp_l0 / out_px  # the exact resolution of what was segmented
    nuc, tissue = nuclei_of_tile(rgb, mpp=mpp, params=cfg.segmentation)
    tissue_mm2 = tissue * (out_px * mpp / 1000.0) ** 2
    feats = tile_features(nuc, mpp=mpp, tissue_mm2=tissue_mm2, counts=clump_counts(nuc),
                          max_edge_um=cfg.max_edge_um)
    to_l0 = mpp / mpp_l0
    cx = np.rint(x + nuc[:, 1] * to_l0).astype(np.int64)
    cy = np.rint(y + nuc[:, 0] * to_l0).astype(np.int64)
    return feats, tissue_mm2, np.column_stack([cx, cy]), nuc[:, 2].astype(np.float32)


def nuclei_batch(batch: dict[str, np.ndarray], *, cfg: NucleiConfig, source: Source, progress=None,
                 stain: dict | None = None) -> pa.Table:
    """Ray Data stage: planned tiles -> one Arrow row per tile; ``stain``: normalise each tile from its
    row's ``stain`` (the slide's) to the reference first."""
    n = len(batch["x"])
    errors = np.asarray(batch["error"], dtype=object).copy()
    feats = np.full((n, len(TILE_FEATURES)), np.nan)
    tissue = np.zeros(n)
    cx, cy, areas = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
    dead: dict[str, str] = {}
    t0 = time.perf_counter()
    for i in range(n):
        uri = batch["uri"][i]
        if errors[i] or uri in dead:
            errors[i] = errors[i] or dead[uri]
            continue
        try:
            f, tissue[i], c, a = _tile_row(source.handle(uri), x=int(batch["x"][i]), y=int(batch["y"][i]),
                                           size_l0=int(batch["size_l0"][i]), mpp_l0=float(batch["mpp_l0"][i]),
                                           cfg=cfg, stain=stain,
                                           slide_stain=np.asarray(batch["stain"][i], np.float32)
                                           if stain and "stain" in batch else None)
            feats[i], cx[i], cy[i], areas[i] = f, c[:, 0].tolist(), c[:, 1].tolist(), a.tolist()
        except InputError as e:
            errors[i] = str(e)
        except Exception as e:  # OpenSlide errors on damaged files; an unusable handle is reopened next time
            slide_source.drop_handle(uri)
            errors[i] = (f"slide {batch['slide_id'][i]}: nuclei of the tile at x={batch['x'][i]}, "
                         f"y={batch['y'][i]} failed: {type(e).__name__}: {e}")
        if errors[i]:
            dead[uri] = errors[i]
    if progress is not None:
        ok = np.array([not e for e in errors], bool)
        from mmray.features.tile_pipeline import _per_slide

        progress.encoded.remote(_per_slide(batch["slide_id"], ok))
    cols = {k: pa.array([str(v) for v in batch[k]], pa.string()) for k in KEYS}
    cols["x"] = pa.array(np.asarray(batch["x"], np.int64))
    cols["y"] = pa.array(np.asarray(batch["y"], np.int64))
    cols["size_l0"] = pa.array(np.asarray(batch["size_l0"], np.int64))
    cols["mpp_l0"] = pa.array(np.asarray(batch["mpp_l0"], np.float64))
    cols["nuclei_mpp"] = pa.array(np.full(n, cfg.target_mpp))
    cols["tissue_fraction"] = pa.array(np.asarray(batch["tissue_fraction"], np.float32))
    cols["tissue_mm2"] = pa.array(tissue.astype(np.float64))
    for j, name in enumerate(TILE_FEATURES):
        cols[name] = pa.array(feats[:, j].astype(np.float32))
    cols["nucleus_x"] = pa.array(cx, pa.list_(pa.int64()))
    cols["nucleus_y"] = pa.array(cy, pa.list_(pa.int64()))
    cols["nucleus_area_um2"] = pa.array(areas, pa.list_(pa.float32()))
    cols["seconds"] = pa.array(np.full(n, (time.perf_counter() - t0) / max(n, 1)), pa.float32())
    cols["error"] = pa.array([str(e) for e in errors], pa.string())
    return pa.table(cols)


def nuclei_dataset(slides: list[dict], *, spec: TilingSpec, cfg: NucleiConfig, source: Source,
                   limits: PlanLimits = PlanLimits(), progress=None, resources: dict[str, float] | None = None,
                   stain: dict | None = None):
    """Rows of :func:`nuclei_batch` for ``slides`` (dicts like :func:`mmray.features.tile_pipeline.tile_dataset`
    takes); a lazy ``ray.data.Dataset``."""
    import ray.data

    items = slide_items(slides)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(plan_nuclei_batch, batch_size=1, batch_format="numpy",
                        fn_kwargs={"spec": spec, "source": source, "cfg": cfg, "limits": limits,
                                   "progress": progress})
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    return ds.map_batches(nuclei_batch, batch_size=cfg.batch_size, batch_format="numpy",
                          fn_kwargs={"cfg": cfg, "source": source, "progress": progress, "stain": stain},
                          num_cpus=cfg.num_cpus,
                          concurrency=cfg.concurrency, resources=resources or None)
