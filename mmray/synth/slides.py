"""Synthetic whole-slide images: pyramidal JPEG tiled TIFFs with planted H&E morphology.

A slide is a generic tiled TIFF (OpenSlide vendor ``generic-tiff``): one page
per level, each 4x smaller, RGB JPEG tiles, and XResolution/YResolution in
pixels per centimetre, from which OpenSlide reports ``openslide.mpp-x/-y``.

Planted signal: nuclear density (nuclei per mm^2 of tissue) grows as
``exp(0.35 * z_wsi)`` and nuclear size, pleomorphism and darkness grow with
``z_wsi``; the subtype sets architecture and hue (adenocarcinoma: glands with
white lumens lined by radially elongated nuclei in spindle-cell stroma;
squamous cell: solid pink nests with keratin pearls; large cell: big scattered
vesicular nuclei with nucleoli in pale tissue).  The slide centre is always
tissue and the corners are always background.  Only part of the tissue is
tumour; the rest is non-tumour stroma and normal glands, and each tissue
source site stains in its own colours (:mod:`mmray.synth.slide_tissue`); a
fraction of slides gets a QuPath GeoJSON tumour annotation.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import numpy as np

from mmray.errors import ConfigError, UnknownNameError
from mmray.memory import mib
from mmray.progress import RateLog
from mmray.synth.latent import Patient
from mmray.synth.parallel import parallel_map
from mmray.synth.profiles import SynthProfile
from mmray.synth.slide_tissue import NORMAL_DENSITY_PER_MM2, mask_truth, site_stain, tumour_geojson
from mmray.synth.slide_writer import PyramidSpec, WriteStats, write_pyramid
from mmray.synth.slide_morphology import (  # noqa: F401  (BACKGROUND_RGB, planted_density_per_mm2 are API)
    _E_LEVELS, _E_MAX, _E_MIN, _H_LEVELS, _H_MAX, _MAX_STAMP_ELEMENTS, BACKGROUND_RGB, JPEG_QUALITY,
    _MORPH, LEVEL_DOWNSAMPLE, TRUNCATE_FRACTION, Blobs, Plan, plan_slide, planted_density_per_mm2)

log = logging.getLogger(__name__)
_WRITER = "_writer"  # the key that carries a slide's write statistics out of its task
PROGRESS_MIN_TILES = 20_000  # slides with more level-0 tiles log a rate/ETA line every 30 s while written


def slide_id(patient_id: str, k: int) -> str:
    """TCGA diagnostic-slide barcode of a patient's ``k``-th slide (1-based)."""
    return f"{patient_id}-01Z-00-DX{k}"


def write_slides(patients: list[Patient], *, out_dir: Path, profile: SynthProfile, seed: int,
                 writer_stats: list[dict] | None = None) -> list[dict]:
    """Write every patient's slides as ``out_dir/<slide_id>.tiff``.

    Returns one dict per slide, in patient then slide order: ``patient_id``,
    ``slide_id``, ``path`` (relative to ``out_dir``'s parent), ``width_px``,
    ``height_px``, ``mpp``, ``levels``, ``tissue_fraction``,
    ``nuclear_density_per_mm2`` (planted, in the tumour), ``corrupt`` (None or
    ``"truncated_slide"``), ``acquisition_date`` (ISO), ``site`` and ``stain``
    (its tissue source site's stain), ``tumour_fraction`` (of the tissue),
    ``nuclear_density_tissue_per_mm2`` (expected over all tissue),
    ``tumour_mask`` (:func:`mmray.synth.slide_tissue.mask_truth`) and
    ``annotation`` (path of its GeoJSON tumour annotation relative to
    ``out_dir``'s parent, or None: ``profile.p_annotated`` of the intact
    slides, at least one, have one, under ``<out_dir's parent>/annotations/``).
    ``writer_stats``, when given, receives one dict per slide of how it was written (slide_id, seconds,
    level-0 tiles, background tiles, bytes and the writing process's peak RSS in MiB; not part of the
    records, which depend only on the inputs).
    A slide's pixels depend only on ``(seed, patient.index, k)``.
    """
    _check_profile(profile)
    for p in patients:
        if p.subtype not in _MORPH:
            raise UnknownNameError("subtype", p.subtype, list(_MORPH))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [(p, k) for p in patients for k in range(1, p.n_slides + 1)]
    annotate = annotated_slides(keys, p_annotated=profile.p_annotated, seed=seed)
    tasks = [(p, k, out_dir, profile, seed, i in annotate) for i, (p, k) in enumerate(keys)]
    records = parallel_map(_write_task, tasks, use_ray=profile.use_ray, desc="slides")
    stats = [r.pop(_WRITER) for r in records]
    if writer_stats is not None:
        writer_stats.extend(stats)
    return records


def annotated_slides(keys: list[tuple[Patient, int]], *, p_annotated: float, seed: int) -> set[int]:
    """Indices into ``keys`` ((patient, k) of every slide) of the slides with a tumour annotation: a seeded
    choice of ``round(p_annotated x intact slides)`` (at least one when ``p_annotated > 0``)."""
    intact = [i for i, (p, k) in enumerate(keys) if not (k == 1 and "truncated_slide" in p.corruptions)]
    if p_annotated <= 0 or not intact:
        return set()
    n = min(len(intact), max(1, int(round(p_annotated * len(intact)))))
    return {int(i) for i in np.random.default_rng([seed, 4]).choice(intact, size=n, replace=False)}


def _check_profile(prof: SynthProfile) -> None:
    tile_ok = prof.slide_tile_px >= 16 and prof.slide_tile_px % 16 == 0
    checks = [("slide_width_px", prof.slide_width_px >= 64, "at least 64"),
              ("slide_height_px", prof.slide_height_px >= 64, "at least 64"),
              ("slide_tile_px", tile_ok, "a positive multiple of 16 (a TIFF rule)"),
              ("slide_levels", prof.slide_levels >= 1, "at least 1"), ("slide_mpp", prof.slide_mpp > 0, "positive")]
    problems = [(name, f"must be {rule}, got {getattr(prof, name)}") for name, ok, rule in checks if not ok]
    if problems:
        raise ConfigError(problems, source=f"synth profile {prof.name!r}")


def _write_task(task: tuple) -> dict:
    patient, k, out_dir, profile, seed, annotate = task
    sid = slide_id(patient.patient_id, k)
    path = out_dir / f"{sid}.tiff"
    rng = np.random.default_rng([seed, 2, patient.index, k])
    plan = plan_slide(patient, profile=profile, rng=rng)
    partial = path.with_name(path.name + ".partial")
    stats = _write_pyramid(partial, plan=plan, profile=profile, rng=rng,
                           taken=dt.datetime.combine(patient.biopsy_date, dt.time(0, 0)), name=sid)
    os.replace(partial, path)  # a half-written slide is never visible under its name
    corrupt = None
    if k == 1 and "truncated_slide" in patient.corruptions:
        os.truncate(path, int(path.stat().st_size * TRUNCATE_FRACTION))
        corrupt = "truncated_slide"
    annotation = None
    if annotate:
        ann = out_dir.parent / "annotations" / f"{sid}.geojson"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps(tumour_geojson(plan.tumour_mask, grid_px=plan.grid_px)) + "\n")
        annotation = f"{ann.parent.name}/{ann.name}"
    density, f = planted_density_per_mm2(patient), plan.tumour_fraction
    return {"patient_id": patient.patient_id, "slide_id": sid, "path": f"{out_dir.name}/{path.name}",
            "width_px": profile.slide_width_px, "height_px": profile.slide_height_px, "mpp": profile.slide_mpp,
            "levels": profile.slide_levels, "tissue_fraction": round(plan.tissue_fraction, 4),
            "nuclear_density_per_mm2": round(density, 1),
            "corrupt": corrupt, "acquisition_date": patient.biopsy_date.isoformat(),
            "site": patient.site, "stain": site_stain(patient.site).as_dict(), "tumour_fraction": round(f, 4),
            "nuclear_density_tissue_per_mm2": round(f * density + (1 - f) * NORMAL_DENSITY_PER_MM2, 1),
            "tumour_mask": mask_truth(plan.tumour_mask, grid_px=plan.grid_px), "annotation": annotation,
            _WRITER: {"slide_id": sid, "seconds": round(stats.seconds, 2), "level0_tiles": stats.level0_tiles,
                      "background_tiles": stats.background_tiles, "file_bytes": stats.file_bytes,
                      "peak_rss_mib": mib(stats.peak_rss_bytes)}}


def _stamp(canvas: np.ndarray, blobs: Blobs, *, y0: int, x0: int, profile: str) -> None:
    """Max-composite ellipses into ``canvas`` (level-0 origin ``y0, x0``), vectorised per size class.

    profile: ``disc`` (flat), ``nucleus`` (darker centre), ``vesicular`` (dark rim, pale centre,
    nucleolus), ``cone`` (1 at the centre, 0 at the edge).
    """
    h, w = canvas.shape
    r_max = np.ceil(np.maximum(blobs.ry, blobs.rx)) + 1
    size_class = np.ceil(2 * np.log2(r_max)).astype(int)  # half-octave classes bound the wasted offsets
    for cls in np.unique(size_class):
        members = np.flatnonzero(size_class == cls)
        off = np.arange(-int(r_max[members].max()), int(r_max[members].max()) + 1, dtype=np.float32)
        dy, dx = (a.reshape(1, -1) for a in np.meshgrid(off, off, indexing="ij"))
        step = max(1, _MAX_STAMP_ELEMENTS // dy.size)
        for start in range(0, members.size, step):
            i = members[start:start + step]
            cy, cx = blobs.y[i, None] - y0, blobs.x[i, None] - x0
            py, px = np.rint(cy) + dy, np.rint(cx) + dx
            c, s = np.cos(blobs.theta[i, None]), np.sin(blobs.theta[i, None])
            u = ((px - cx) * c + (py - cy) * s) / blobs.rx[i, None]
            v = ((py - cy) * c - (px - cx) * s) / blobs.ry[i, None]
            rr = u * u + v * v
            keep = (rr < 1.0) & (py >= 0) & (py < h) & (px >= 0) & (px < w)
            row = np.broadcast_to(np.arange(i.size)[:, None], keep.shape)[keep]
            rr = rr[keep]
            d = np.sqrt(rr)
            edge = 1.0 - d if profile == "cone" else np.clip((1.0 - d) * np.minimum(blobs.rx, blobs.ry)[i][row], 0, 1)
            if profile == "nucleus":
                edge *= 1.0 - 0.15 * rr
            elif profile == "vesicular":
                edge *= 0.5 + 0.5 * rr + 0.7 * (rr < 0.04)
            val = (edge * blobs.value[i][row]).astype(np.float32)
            np.maximum.at(canvas.reshape(-1), py[keep].astype(np.intp) * w + px[keep].astype(np.intp), val)


def _lerp_matrix(start: int, n: int, *, grid_px: int, n_grid: int) -> tuple[np.ndarray, int, int]:
    """Linear weights (n, hi - lo) from grid samples ``[lo, hi)`` to level-0 pixels ``[start, start + n)``."""
    g = np.clip((np.arange(start, start + n) - (grid_px - 1) / 2) / grid_px, 0, n_grid - 1)
    i0 = np.minimum(np.floor(g).astype(int), max(n_grid - 2, 0))
    w = (g - i0).astype(np.float32)
    lo, hi = int(i0.min()), min(int(i0.max()) + 2, n_grid)
    mat = np.zeros((n, hi - lo), np.float32)
    mat[np.arange(n), i0 - lo] = 1 - w
    mat[np.arange(n), np.minimum(i0 + 1 - lo, hi - lo - 1)] += w
    return mat, lo, hi


def _render_tile(plan: Plan, rng: np.random.Generator, y0: int, x0: int, *, tile_px: int) -> np.ndarray | None:
    """RGB (tile_px, tile_px, 3) uint8 of the level-0 tile at ``(y0, x0)``; None when it has no tissue."""
    t, morph = tile_px, plan.morph
    my, ylo, yhi = _lerp_matrix(y0, t, grid_px=plan.grid_px, n_grid=plan.fields.shape[1])
    mx, xlo, xhi = _lerp_matrix(x0, t, grid_px=plan.grid_px, n_grid=plan.fields.shape[2])
    coarse = plan.fields[:3, ylo:yhi, xlo:xhi]  # tissue, eosin, nests (the tumour field is in the plan)
    nuclei_here, normal_here = plan.nuclei.in_box(y0, x0, t), plan.normal_nuclei.in_box(y0, x0, t)
    if coarse[0].max() <= plan.tissue_thr - 0.5 / plan.tissue_gain and nuclei_here.y.size + normal_here.y.size == 0:
        return None  # tissue is exactly 0 there and no nucleus reaches in
    tissue_f, eosin_lf, nests_f = my @ coarse @ mx.T  # (3, t, t)
    tissue = np.clip((tissue_f - plan.tissue_thr) * plan.tissue_gain + 0.5, 0.0, 1.0)
    noise = rng.random((t, t), dtype=np.float32)
    period = plan.fibre.shape[0]
    fibre = plan.fibre.take(np.arange(y0, y0 + t) % period, axis=0).take(np.arange(x0, x0 + t) % period, axis=1)
    eosin = morph.eosin * eosin_lf * (1.0 + 0.12 * fibre)
    hema = np.full((t, t), morph.h_bg, dtype=np.float32)
    if plan.lumens.y.size:  # adenocarcinoma glands and normal glands
        lumen, rim = np.zeros((t, t), np.float32), np.zeros((t, t), np.float32)
        _stamp(lumen, plan.lumens.in_box(y0, x0, t), y0=y0, x0=x0, profile="disc")
        _stamp(rim, plan.glands.in_box(y0, x0, t), y0=y0, x0=x0, profile="disc")
        tissue *= 1.0 - lumen
        rim *= 1.0 - lumen
        eosin += rim * (0.75 * morph.eosin - eosin)  # epithelial cytoplasm: paler, a little purple
        hema += 0.10 * rim
    if plan.subtype == "squamous_cell":
        eosin += np.clip(nests_f * 5.0, 0.0, 1.0) * (0.22 - 0.1 * morph.eosin * fibre)  # dense pink sheets
        pearl = np.zeros((t, t), np.float32)
        _stamp(pearl, plan.pearls.in_box(y0, x0, t), y0=y0, x0=x0, profile="cone")
        inside = pearl > 0
        eosin[inside] = 0.85 + 0.35 * np.cos(2 * np.pi * 3.5 * pearl[inside])  # keratin lamellae
        hema[inside] = 0.02
    nuclei = np.zeros((t, t), np.float32)
    _stamp(nuclei, nuclei_here, y0=y0, x0=x0, profile="vesicular" if plan.subtype == "large_cell" else "nucleus")
    _stamp(nuclei, normal_here, y0=y0, x0=x0, profile="nucleus")
    hema *= tissue
    hema += nuclei * (0.8 + 0.4 * noise)  # chromatin texture
    eosin *= tissue
    return _colour(plan.lut, hema, eosin, noise)


def _colour(lut: np.ndarray, hema: np.ndarray, eosin: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Stain amounts -> RGB via the lookup table, dithered by ``noise`` (which is the pixel noise)."""
    hq = np.clip(hema * ((_H_LEVELS - 1) / _H_MAX) + noise, 0, _H_LEVELS - 1).astype(np.int32)
    e_scale = (_E_LEVELS - 1) / (_E_MAX - _E_MIN)
    eq = np.clip((eosin - _E_MIN) * e_scale + 1.5 - 2.0 * noise, 0, _E_LEVELS - 1).astype(np.int32)
    hq *= _E_LEVELS
    hq += eq
    return np.take(lut, hq, axis=0)  # take() is ~3x faster than fancy indexing here


def _write_pyramid(path: Path, *, plan: Plan, profile: SynthProfile, rng: np.random.Generator,
                   taken: dt.datetime, name: str = "") -> WriteStats:
    """Render level 0 tile by tile and stream it, with the pyramid above it, into ``path``
    (:mod:`mmray.synth.slide_writer`: memory bounded by the slide's width, never a whole level)."""
    tile, w, h, mpp = profile.slide_tile_px, plan.width_px, plan.height_px, plan.mpp
    zero = np.zeros((tile, tile), np.float32)
    background = _colour(plan.lut, zero, zero, rng.random((tile, tile), dtype=np.float32))  # shared by empty tiles

    total = -(-h // tile) * -(-w // tile)
    progress = RateLog(log, f"synth: slide {name}", total, unit="tiles", interval_s=30.0) \
        if total >= PROGRESS_MIN_TILES else None

    def tiles():
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                yield _render_tile(plan, rng, y0, x0, tile_px=tile)  # whole tiles, also past the image edge
                if progress is not None:
                    progress.tick()

    # Aperio-style key/values for humans; no leading "Aperio", so OpenSlide keeps it generic-tiff.
    description = (f"mmray synthetic slide {w}x{h} ({tile}x{tile}) JPEG/RGB Q={JPEG_QUALITY}"
                   f"|MPP = {mpp}|AppMag = {20 if mpp >= 0.4 else 40}")
    spec = PyramidSpec(width_px=w, height_px=h, tile_px=tile, levels=profile.slide_levels, mpp=mpp,
                       jpeg_quality=JPEG_QUALITY, downsample=LEVEL_DOWNSAMPLE, description=description,
                       datetime=taken)
    return write_pyramid(path, tiles(), spec=spec, background=background)
