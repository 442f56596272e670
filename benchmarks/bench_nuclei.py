"""Nuclei throughput: a naive per-tile loop vs the mmray nuclei stage (Ray Data), on the same tiles.

    python benchmarks/bench_nuclei.py --json nuclei.json [--slides 3] [--tiles-per-slide 64] [--trials 2]
        [--target-mpp 0.5] [--cpus 2]

Both sides get the same slides (synthetic ``demo``-profile slides written by
mmray.synth) and the same tiles: the demo's tile grid (128-px tiles at
2 um/px, i.e. 256 um squares, with at least 25% tissue), a seeded sample of
``--tiles-per-slide`` per slide (:func:`mmray.features.nuclei_stage.sample_tiles`,
as the stage samples them), each segmented at ``--target-mpp`` (0.5 um/px, 512 x 512 pixels; the demo
uses 1.0);
both compute the same per-tile output (nucleus morphometry, tile statistics
and the Delaunay nucleus graph, :func:`mmray.features.nuclei_graph.tile_features`).

* baseline: one process, one OpenSlide handle per slide; per tile
  ``read_region`` -> skimage ``rgb2hed`` -> Gaussian, Otsu, fill holes,
  distance transform, ``peak_local_max``, ``watershed`` -> ``regionprops_table``
  (the textbook loop);
* mmray: :func:`mmray.features.nuclei_stage.nuclei_dataset` (planning tasks,
  then CPU tasks that read and segment ``batch_size`` tiles each:
  haematoxylin by lookup tables, vectorised morphometry) on a local Ray with
  ``--cpus`` CPUs.

Both sides plan their slides (thumbnail, tissue mask, tile grid) on the
clock.  Throughput is steady state, tiles done between the moments 10% and
90% of them were done over that time (as ``bench_tiles.py``); the whole run
including Ray's start-up is ``tiles_per_s_overall``.  The sides run in
``--trials`` alternating rounds and the best round of each is kept, so load
from other processes hits both alike; every round is in ``trials`` and the
load average in ``machine``.  JSON: ``baseline``, ``mmray``, ``ratio`` (mmray
tiles/s over baseline tiles/s), ``trials``, ``setup``, ``machine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmray.features.nuclei_stage import NucleiConfig, sample_tiles  # noqa: E402
from mmray.features.tiling import TilingSpec, plan_slide  # noqa: E402

SPEC = TilingSpec(target_mpp=2.0, tile_px=128, region_px=0, min_tissue_fraction=0.25)


def make_slides(out: Path, n: int, seed: int) -> list[dict]:
    from mmray.synth.latent import sample_patients
    from mmray.synth.profiles import get_profile
    from mmray.synth.slides import write_slides

    prof = dataclasses.replace(get_profile("demo"), use_ray=False, p_annotated=0.0)
    patients = [dataclasses.replace(p, n_slides=1, corruptions=[]) for p in sample_patients(n, profile=prof, seed=seed)]
    records = write_slides(patients, out_dir=out / "slides", profile=prof, seed=seed)
    return [{"slide_id": r["slide_id"], "patient_id": r["patient_id"], "event_time": "2020-01-01",
             "uri": str(out / r["path"])} for r in records]


def tiles_of(slides: list[dict], cfg: NucleiConfig) -> list[tuple[str, np.ndarray, np.ndarray, int, float]]:
    """Per slide ``(uri, x, y, size_l0, mpp_l0)`` of the tiles the stage segments."""
    import openslide

    out = []
    for s in slides:
        with openslide.OpenSlide(s["uri"]) as handle:
            mpp = float(handle.properties["openslide.mpp-x"])
            t, _, _ = plan_slide(handle, mpp_l0=mpp, spec=SPEC)
        keep = sample_tiles(s["slide_id"], len(t.tile_x), max_tiles=cfg.max_tiles_per_slide, seed=cfg.seed)
        out.append((s["uri"], t.tile_x[keep], t.tile_y[keep], int(t.tile_l0), mpp))
    return out


def naive_tile(rgb: np.ndarray, *, mpp: float) -> np.ndarray:
    """The textbook per-tile segmentation: skimage rgb2hed, watershed, regionprops_table."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops_table
    from skimage.segmentation import watershed

    from mmray.features.nuclei import NucleiParams, clump_counts
    from mmray.features.nuclei_graph import tile_features

    p = NucleiParams()
    h = np.maximum(rgb2hed(rgb)[..., 0], 0)
    hs = ndi.gaussian_filter(h, p.smooth_um / mpp)
    thr = max(threshold_otsu(hs), p.min_threshold) if hs.max() > hs.min() else np.inf
    mask = ndi.binary_fill_holes(hs > thr)
    cc, _ = ndi.label(mask)
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(p.peak_distance_um / mpp))), labels=cc,
                           exclude_border=False)
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=mask)
    props = regionprops_table(labels, intensity_image=h, properties=(
        "centroid", "area", "perimeter", "eccentricity", "solidity", "axis_major_length", "axis_minor_length",
        "intensity_mean", "intensity_std"))
    area = props["area"] * mpp * mpp
    ok = (area >= p.min_area_um2) & (area <= p.max_area_um2)
    lap = ndi.mean(np.abs(ndi.laplace(h)), labels, np.arange(1, labels.max() + 1)) if labels.max() else np.zeros(0)
    nuc = np.column_stack([props["centroid-0"], props["centroid-1"], area, props["perimeter"] * mpp,
                           props["eccentricity"], props["solidity"], props["axis_major_length"] * mpp,
                           props["axis_minor_length"] * mpp, props["intensity_mean"], props["intensity_std"],
                           lap])[ok]
    tissue_mm2 = (rgb.min(axis=2) < 220).mean() * (rgb.shape[0] * mpp / 1000.0) ** 2
    return tile_features(nuc, mpp=mpp, tissue_mm2=tissue_mm2, counts=clump_counts(nuc))


def window_rate(marks: list[tuple[float, int]], total: int) -> float:
    """Tiles/s between the moments 10% and 90% of the tiles were done (``marks``: (time, tiles done))."""
    lo_t, lo_n = next((t, n) for t, n in marks if n >= 0.1 * total)
    hi_t, hi_n = next((t, n) for t, n in marks if n >= 0.9 * total)
    return (hi_n - lo_n) / (hi_t - lo_t) if hi_t > lo_t else float("nan")


def _result(marks, n: int, start: float) -> dict:
    seconds = time.perf_counter() - start
    return {"tiles": n, "seconds": round(seconds, 3), "tiles_per_s": round(window_rate(marks, n), 2),
            "tiles_per_s_overall": round(n / seconds, 2)}


def baseline(slides, cfg: NucleiConfig) -> dict:
    import openslide

    start, marks, n = time.perf_counter(), [], 0
    for uri, xs, ys, size_l0, mpp_l0 in tiles_of(slides, cfg):  # planning on the clock, as the stage's
        out_px = int(round(size_l0 * mpp_l0 / cfg.target_mpp))
        with openslide.OpenSlide(uri) as s:
            for x, y in zip(xs, ys):
                rgba = s.read_region((int(x), int(y)), 0, (size_l0, size_l0))
                rgb = np.asarray(rgba.convert("RGB").resize((out_px, out_px), 1) if out_px != size_l0
                                 else rgba.convert("RGB"))
                naive_tile(rgb, mpp=size_l0 * mpp_l0 / out_px)
                n += 1
                marks.append((time.perf_counter(), n))
    return _result(marks, n, start)


def mmray_stage(slides, *, cfg: NucleiConfig, scratch: str) -> dict:
    from mmray.features.nuclei_stage import nuclei_dataset
    from mmray.features.tile_pipeline import Source

    start, marks, n = time.perf_counter(), [], 0
    ds = nuclei_dataset(slides, spec=SPEC, cfg=cfg, source=Source(scratch))
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        n += batch.num_rows
        marks.append((time.perf_counter(), n))
    return {**_result(marks, n, start), "stages": "plan (tasks) -> read + segment (tasks, batch_size tiles each)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="nuclei.json")
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--tiles-per-slide", type=int, default=64)
    ap.add_argument("--target-mpp", type=float, default=0.5, help="segmentation resolution (the demo uses 1.0)")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    import ray

    cfg = NucleiConfig(enabled=True, max_tiles_per_slide=args.tiles_per_slide, target_mpp=args.target_mpp)
    with tempfile.TemporaryDirectory(prefix="bench-nuclei-") as tmp:
        slides = make_slides(Path(tmp), args.slides, args.seed)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            trials = []
            for k in range(args.trials):
                load = os.getloadavg()[0]
                trials.append({"round": k, "load_1min": round(load, 2),
                               "baseline": baseline(slides, cfg),
                               "mmray": mmray_stage(slides, cfg=cfg, scratch=tmp)})
                print(json.dumps(trials[-1]), flush=True)
        finally:
            ray.shutdown()
    best_b = max((t["baseline"] for t in trials), key=lambda r: r["tiles_per_s"])
    best_m = max((t["mmray"] for t in trials), key=lambda r: r["tiles_per_s"])
    out = {"baseline": best_b, "mmray": best_m, "ratio": round(best_m["tiles_per_s"] / best_b["tiles_per_s"], 3),
           "trials": trials,
           "setup": {"slides": args.slides, "tiles_per_slide": args.tiles_per_slide,
                     "tile": f"256 um at {cfg.target_mpp} um/px", "cpus": args.cpus, "batch_size": cfg.batch_size},
           "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("baseline", "mmray", "ratio")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
