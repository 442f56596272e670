"""Tissue tiles of the cohort's slides as Ray Datasets for DINO, through the WSI plan and read stages.

1. :func:`plan_cohort`: the WSI tile plan (:func:`mmray.features.tile_pipeline.plan_batch`: thumbnail,
   tissue mask, tile grid) runs as Ray tasks, one per slide, and returns coordinates only (small);
   slides that fail (unreadable, no tissue, implausible resolution) come back as failures with reasons.
2. :func:`sample_tiles`: a seeded sample of ``tiles_per_slide`` tiles per slide, and the held-out
   probe slides (spread over the label's classes; never trained on).
3. :func:`pixel_dataset`: the coordinates in blocks of one slide's tiles, block order randomised every
   epoch, then the WSI read stage (:func:`mmray.features.tile_pipeline.read_pixels`: OpenSlide reads,
   uint8 ``pixels``).  Nothing but the tiles of a few blocks is in memory at once (``data.cache`` keeps
   the decoded tiles in the object store instead, for cohorts that fit).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray.features.tile_pipeline import Source, plan_batch, read_pixels
from mmray.features.tiling import PlanLimits, TilingSpec

log = logging.getLogger(__name__)
KEEP = ("slide_id", "patient_id", "event_time", "uri", "scale", "x", "y", "tile_px", "size_l0", "mpp", "region_id",
        "level", "read_px", "tissue_fraction", "error")


def plan_cohort(slides: list[dict], *, spec: TilingSpec, source: Source,
                limits: PlanLimits = PlanLimits()) -> tuple[pd.DataFrame, dict[str, str]]:
    """``(tile rows, {slide_id: failure reason})`` of ``slides`` (dicts as the WSI ingest passes them)."""
    import dataclasses

    import ray.data

    spec = dataclasses.replace(spec, region_px=0)  # tiles only
    items = [{**s, "mpp": np.nan if s.get("mpp") is None else float(s["mpp"])} for s in slides]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(plan_batch, batch_size=1, batch_format="numpy",
                        fn_kwargs={"spec": spec, "source": source, "limits": limits})
    frame = ds.to_pandas()
    errors = frame["error"].astype(str) != ""
    failures = {str(r["slide_id"]): str(r["error"]) for _, r in frame[errors].iterrows()}
    rows = frame[~errors & (frame["scale"] == "tile")].reset_index(drop=True)
    return rows[[c for c in KEEP if c in rows.columns]], failures


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


@dataclass
class TileSample:
    train: pd.DataFrame  # tile rows DINO trains on
    probe: pd.DataFrame  # tile rows of the held-out probe slides (with ``label``)
    probe_slides: list[str]


def sample_tiles(rows: pd.DataFrame, *, tiles_per_slide: int, seed: int, labels: dict[str, str] | None = None,
                 probe_slides: int = 0, probe_tiles: int = 16) -> TileSample:
    """Seeded per-slide samples (module doc).  ``labels``: patient_id -> label; the probe takes
    ``probe_slides`` slides of labelled patients, round robin over the classes, and ``probe_tiles`` tiles of each."""
    probe_ids: list[str] = []
    if labels and probe_slides:
        slides = rows.drop_duplicates("slide_id")
        pid_of = dict(zip(slides["slide_id"].astype(str), slides["patient_id"].astype(str)))
        probe_ids = choose_probe_slides(pid_of, labels, n=probe_slides, seed=seed)
    held = rows["slide_id"].astype(str).isin(set(probe_ids))
    train = _per_slide(rows[~held], tiles_per_slide, seed, "train")
    probe = _per_slide(rows[held], probe_tiles, seed, "probe")
    if len(probe):
        probe = probe.assign(label=probe["patient_id"].astype(str).map(labels))
    return TileSample(train=train, probe=probe, probe_slides=probe_ids)


def choose_probe_slides(patient_of: dict[str, str], labels: dict[str, str], *, n: int, seed: int) -> list[str]:
    """Held-out slides for a probe: ``n`` slides of distinct labelled patients, round robin over the label's
    classes that have at least two patients (seeded), plus every other slide of the patients chosen (the encoder
    never sees a probe patient)."""
    by_class: dict[str, dict[str, str]] = {}  # class -> {patient: one of its slides}
    for sid, pid in sorted(patient_of.items()):
        if pid in labels:
            by_class.setdefault(labels[pid], {}).setdefault(pid, sid)
    rng = _rng(seed, "probe")
    # classes with one patient cannot be scored across patients; the others take turns
    queues = {c: list(rng.permutation(sorted(v.values()))) for c, v in sorted(by_class.items()) if len(v) >= 2}
    chosen: list[str] = []
    while len(chosen) < n and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(chosen) < n:
                chosen.append(str(queues[c].pop()))
    patients = {patient_of[s] for s in chosen}
    return chosen + [s for s, p in sorted(patient_of.items()) if p in patients and s not in chosen]


def _per_slide(rows: pd.DataFrame, n: int, seed: int, what: str) -> pd.DataFrame:
    parts = []
    for sid, g in rows.groupby("slide_id", sort=True):
        if n and len(g) > n:
            g = g.iloc[np.sort(_rng(seed, f"{what}/{sid}").choice(len(g), n, replace=False))]
        parts.append(g)
    return pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0]


def read_tile_pixels(batch: dict[str, np.ndarray], *, canvas_px: int, source: Source,
                     keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Ray Data stage: the WSI read stage, then only the rows that read, with ``pixels`` (and ``keep`` columns)."""
    out = read_pixels(batch, canvas_px=canvas_px, source=source)
    ok = np.array([not e for e in out["error"]], bool)
    if not ok.all():
        log.warning("pretrain: %d of %d tile read(s) failed, e.g. %s", int((~ok).sum()), len(ok),
                    out["error"][~ok][0])
    res = {"pixels": out["pixels"][ok]}
    for k in keep:
        res[k] = np.asarray(out[k])[ok]
    return res


def pixel_dataset(rows: pd.DataFrame, *, tile_px: int, source: Source, block_rows: int = 32,
                  num_cpus: float = 1.0, concurrency: int | None = None, shuffle_blocks: bool = True,
                  keep: tuple[str, ...] = (), cache: bool = False, seed: int | None = None):
    """A Ray Dataset of ``pixels`` (uint8 ``[tile_px, tile_px, 3]``) read from ``rows`` (module doc); ``seed``
    fixes the shuffled block order (Ray Data may still deliver finished blocks in another order)."""
    import ray.data

    blocks = []
    for _, g in rows.groupby("slide_id", sort=True):
        for s in range(0, len(g), block_rows):
            blocks.append(g.iloc[s:s + block_rows].reset_index(drop=True))
    if not blocks:
        blocks = [rows.reset_index(drop=True)]
    ds = ray.data.from_pandas(blocks)
    if shuffle_blocks:
        ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(read_tile_pixels, batch_size=None, batch_format="numpy", num_cpus=num_cpus,
                        concurrency=concurrency, fn_kwargs={"canvas_px": tile_px, "source": source, "keep": keep})
    return ds.materialize() if cache else ds


def read_all(rows: pd.DataFrame, *, tile_px: int, source: Source, keep: tuple[str, ...] = (),
             num_cpus: float = 1.0) -> dict[str, np.ndarray]:
    """Every tile of ``rows`` read now (small sets: the probe), as numpy columns."""
    if rows.empty:
        return {"pixels": np.zeros((0, tile_px, tile_px, 3), np.uint8), **{k: np.zeros(0) for k in keep}}
    ds = pixel_dataset(rows, tile_px=tile_px, source=source, shuffle_blocks=False, keep=keep, num_cpus=num_cpus)
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("pixels", *keep)}
