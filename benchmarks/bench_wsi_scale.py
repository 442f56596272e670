"""Real-size slides: per-worker peak memory and tiles/s of slide ingest against slide size.

    python benchmarks/bench_wsi_scale.py --json wsi_scale.json --png wsi_scale.png \
        [--sizes 12500x10000,25000x20000,50000x40000,100000x80000] [--workdir /tmp/wsi-scale] [--keep-slides]

For each size: ``mmray synth --profile xl --slide-px WxH`` writes one real-size pyramidal slide (0.25 um/px,
256-px JPEG tiles, five levels; the writer's peak RSS and time are recorded), then ``mmray ingest
--modalities wsi`` embeds it at 0.5 um/px in 256-px tiles (4096-px regions) on a local Ray, with a small
encoder (``--encoder``, random weights: the point is memory and flow, not features).  A watcher polls
the ingest command's whole process tree (driver, raylet, every Ray worker) and keeps each process's
peak RSS (``VmHWM``), so the per-worker peak covers planning tasks, read tasks and encoder actors.

Baseline: how the tissue mask's thumbnail used to be read (the whole pyramid level at the thumbnail's
resolution in one ``read_region``, then resized), against mmray's block-by-block read
(:func:`mmray.features.tissue.read_thumbnail`), each in a fresh process on the same slide: peak RSS
above the process's RSS after imports.

JSON: ``mmray`` (per size: worker and driver peak RSS, tiles, tiles/s, ingest seconds, writer peak RSS
and seconds), ``baseline`` (per size: the whole-level thumbnail read's extra RSS) and mmray's block read's,
``ratio`` (baseline over mmray extra RSS at the largest size), ``flatness`` (largest over smallest
per-worker peak RSS; ``flatness_by_role`` the same per kind of worker: encoder actors, planning/reading
workers), ``per_core`` (tile reads and single-thread CPU embeddings of resnet50_trunc at 224 px and of the
small encoder per CPU-second and per wall second, on the largest slide: inputs of docs/scale.md's cost
model), ``machine`` (load average before and after).  PNG: peak RSS and tiles/s against slide size.

``--refresh JSON`` recomputes ``per_core``, the steady rates (from the kept ingest logs) and the PNG of an
earlier run without ingesting again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmray.memory import TreePeaks  # noqa: E402

MMRAY = str(Path(sys.executable).parent / "mmray")
DEFAULT_SIZES = "12500x10000,25000x20000,50000x40000,100000x80000"

_THUMB = r"""
import json, sys, numpy as np, openslide
from mmray.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from mmray.features.tissue import TissueParams, read_thumbnail, rgba_to_rgb
from mmray.features.tiling import best_level
from PIL import Image
mode, path = sys.argv[1], sys.argv[2]
s = openslide.OpenSlide(path)
mpp = float(s.properties["openslide.mpp-x"]); params = TissueParams()
reset_peak_rss(); base = rss_bytes()
if mode == "baseline":  # the read this replaced: the whole level in one read_region, then resized
    w0, h0 = s.level_dimensions[0]
    ds = max(params.thumbnail_mpp / mpp, max(w0, h0) / params.thumbnail_max_px, 1.0)
    level = best_level(s.level_downsamples, ds); lw, lh = s.level_dimensions[level]
    rgb = rgba_to_rgb(np.asarray(s.read_region((0, 0), level, (lw, lh))))
    thumb = np.asarray(Image.fromarray(rgb).resize((round(w0 / ds), round(h0 / ds)), Image.Resampling.BOX))
else:
    thumb, _ = read_thumbnail(s, mpp_l0=mpp, params=params)
print(json.dumps({"extra_rss_mib": (peak_rss_bytes() - base) / 2**20, "thumbnail": list(thumb.shape)}))
"""


_RATES = r"""
import json, sys, time, numpy as np, openslide, torch
from mmray.features.encoders import EncoderSpec
from mmray.features.tile_pipeline import TileEncoder
from mmray.features.tiling import TilingSpec, plan_slide, read_tile
path, n_read = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
s = openslide.OpenSlide(path)
t, _, _ = plan_slide(s, mpp_l0=float(s.properties["openslide.mpp-x"]), spec=TilingSpec(region_px=0))
pick = np.linspace(0, len(t.tile_x) - 1, min(n_read, len(t.tile_x))).astype(int)
w0, c0 = time.perf_counter(), time.process_time()
tiles = np.stack([read_tile(s, x=t.tile_x[i], y=t.tile_y[i], level=t.tile_level, read_px=t.tile_read_px, out_px=256)
                  for i in pick])
out = {"read_tiles_per_cpu_s": len(pick) / (time.process_time() - c0),
       "read_tiles_per_wall_s": len(pick) / (time.perf_counter() - w0), "read_px": int(t.tile_read_px)}
for name, px in (("resnet50_trunc", 224), (sys.argv[3], int(sys.argv[4]))):
    enc = TileEncoder(EncoderSpec(name=name, input_px=px), device="cpu", cpu_threads=1)
    enc.embed(tiles[:8])
    w0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.process_time() - c0 < 15 and n < len(tiles):
        enc.embed(tiles[n:n + 32]); n += len(tiles[n:n + 32])
    out[f"embed_{name}_{px}px_tiles_per_cpu_s"] = n / (time.process_time() - c0)
    out[f"embed_{name}_{px}px_tiles_per_wall_s"] = n / (time.perf_counter() - w0)
print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}))
"""


def per_core_rates(slide: str, *, encoder: str, input_px: int, n_read: int = 400) -> dict:
    """One core's tile reading (0.5 um/px, 256 px, from this slide) and single-thread CPU embedding rates:
    the cost model's inputs.  Per CPU-second of the process (what one dedicated core does, whatever else
    the machine runs) and per wall-clock second (what this shared machine gave)."""
    proc = subprocess.run([sys.executable, "-c", _RATES, slide, str(n_read), encoder, str(input_px)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"per-core rates failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "loadavg": _load()}


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def write_slide(out: Path, width: int, height: int, *, seed: int) -> dict:
    """One real-size slide in a one-patient xl cohort (reused when ``out`` already holds it)."""
    done = out / "writer.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([MMRAY, "synth", "--profile", "xl", "--patients", "1", "--seed", str(seed),
                           "--slide-px", f"{width},{height}", "--out", str(out / "cohort")],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"synth failed:\n{proc.stderr[-3000:]}")
    rss = re.search(r"slide writer peak RSS ([\d,.]+) MiB", proc.stdout)
    slide = next((out / "cohort" / "slides").glob("*.tiff"))
    info = {"width_px": width, "height_px": height, "synth_s": round(time.perf_counter() - t0, 1),
            "writer_peak_rss_mib": float(rss.group(1).replace(",", "")) if rss else None,
            "file_mib": round(slide.stat().st_size / 2**20, 1), "slide": str(slide)}
    done.write_text(json.dumps(info))
    return info


def thumbnail_rss(slide: str, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _THUMB, mode, slide], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"thumbnail ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_PROGRESS = re.compile(r"^(\d\d):(\d\d):(\d\d) .*; ([\d,]+)/([\d,]+) tiles\+regions encoded")


def steady_rate(log_text: str) -> float | None:
    """Tiles+regions/s between the first and the last progress line that report encoded rows (start-up and
    the last partial interval left out); None with fewer than two such lines."""
    points = []
    for line in log_text.splitlines():
        m = _PROGRESS.match(line)
        if m and int(m.group(4).replace(",", "")) > 0:
            h, mi, sec = (int(m.group(i)) for i in (1, 2, 3))
            points.append((h * 3600 + mi * 60 + sec, int(m.group(4).replace(",", ""))))
    if len(points) < 2:
        return None
    (t0, n0), (t1, n1) = points[0], points[-1]
    t1 += 86400 if t1 < t0 else 0
    return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None


def ingest(out: Path, *, encoder: str, input_px: int, batch_size: int) -> dict:
    """``mmray ingest --modalities wsi`` on the one-slide cohort, its process tree watched."""
    store = out / "store"
    shutil.rmtree(store, ignore_errors=True)
    cmd = [MMRAY, "ingest", "--cohort", str(out / "cohort" / "cohort.yaml"), "--store", str(store),
           "--modalities", "wsi", "wsi.target_mpp=0.5", "wsi.tile_px=256", "wsi.region_px=4096",
           f"wsi.encoder.name={encoder}", f"wsi.encoder.input_px={input_px}", "wsi.encoder.strict_weights=false",
           f"wsi.encoder.batch_size={batch_size}", "wsi.progress_interval_s=30"]
    log = (out / "ingest.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    watch = TreePeaks(proc.pid, interval_s=0.5).start()
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    watch.stop()
    log.close()
    if rc not in (0, 3):
        raise SystemExit(f"ingest failed ({rc}); see {out / 'ingest.log'}")
    import pyarrow.dataset as pads

    from mmray.store import FeatureStore

    st = FeatureStore(str(store))
    files = [str(store / "wsi_tiles" / st.latest("wsi_tiles") / f) for f in st.files("wsi_tiles")]
    scale = pads.dataset(files).to_table(columns=["scale"]).column("scale").to_pylist()
    procs = watch.table()
    workers = [p for p in procs if p["kind"] == "worker"]
    worst = max(workers, key=lambda p: p["peak_rss_mib"])
    return {"ingest_s": round(seconds, 1), "tiles": scale.count("tile"), "regions": scale.count("region"),
            "tiles_per_s": round((scale.count("tile") + scale.count("region")) / seconds, 1),
            "steady_tiles_per_s": steady_rate((out / "ingest.log").read_text()),
            "worker_peak_rss_mib": worst["peak_rss_mib"], "worker_peak_roles": worst["roles"],
            "driver_peak_rss_mib": next(p["peak_rss_mib"] for p in procs if p["kind"] == "driver"),
            "workers": [p for p in procs if p["kind"] == "worker"],
            "ray_services": [p for p in procs if p["kind"] == "ray"]}


ROLES = {"encoder actor": "TileEncoder", "planning/reading/writing task worker": "read_pixels"}


def role_peaks(row: dict) -> dict:
    """Largest peak RSS (MiB) per kind of Ray worker in one ingest."""
    out = {}
    for role, marker in ROLES.items():
        peaks = [w["peak_rss_mib"] for w in row["mmray"]["workers"] if any(marker in r for r in w["roles"])]
        out[role] = max(peaks) if peaks else None
    return out


def flatness_by_role(rows: list[dict]) -> dict:
    out = {}
    for role in ROLES:
        peaks = [role_peaks(r)[role] for r in rows]
        if all(p is not None for p in peaks):
            out[role] = {"peak_rss_mib": peaks, "flatness": round(max(peaks) / min(peaks), 3)}
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sizes"]
    mpx = [r["width_px"] * r["height_px"] / 1e6 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(mpx, [r["mmray"]["worker_peak_rss_mib"] for r in rows], "o-", label="ingest: largest Ray worker (encoder actor)")
    a.plot(mpx, [role_peaks(r)["planning/reading/writing task worker"] for r in rows], "d-",
           label="ingest: plan/read/write task worker")
    a.plot(mpx, [r["mmray"]["driver_peak_rss_mib"] for r in rows], "s-", label="ingest: driver")
    a.plot(mpx, [r["writer_peak_rss_mib"] for r in rows], "^-", label="synth: slide writer")
    a.plot(mpx, [r["baseline"]["extra_rss_mib"] for r in rows], "x--", label="whole-level thumbnail read (extra)")
    a.set(xscale="log", xlabel="slide size (level-0 px at 0.25 um/px)", ylabel="peak RSS (MiB)",
          title="Memory against slide size")
    a.legend(fontsize=8)
    b.plot(mpx, [r["mmray"]["tiles_per_s"] for r in rows], "o-", label="whole ingest (with start-up)")
    steady = [(x, r["mmray"].get("steady_tiles_per_s")) for x, r in zip(mpx, rows)]
    steady = [(x, v) for x, v in steady if v is not None]
    if steady:
        b.plot(*zip(*steady), "s--", label="steady (progress lines)")
    b.set(xscale="log", xlabel="slide size (level-0 px at 0.25 um/px)", ylabel="tiles + regions per s",
          title="Ingest throughput (0.5 um/px, 256-px tiles)")
    b.legend(fontsize=8)
    labels = [f"{r['width_px'] / 1000:g}k x {r['height_px'] / 1000:g}k" for r in rows]
    for ax in (a, b):
        ax.set_xticks(mpx, labels, fontsize=8)
        ax.minorticks_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def refresh(args) -> int:
    result = json.loads(Path(args.json).read_text())
    work = Path(args.workdir)
    for row in result["sizes"]:
        log = work / f"{row['width_px']}x{row['height_px']}" / "ingest.log"
        if log.exists():
            row["mmray"]["steady_tiles_per_s"] = steady_rate(log.read_text())
    result["mmray"]["steady_tiles_per_s"] = [r["mmray"].get("steady_tiles_per_s") for r in result["sizes"]]
    result["per_core"] = per_core_rates(result["sizes"][-1]["slide"], encoder=args.encoder, input_px=args.input_px)
    result["flatness_by_role"] = flatness_by_role(result["sizes"])
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.png:
        plot(result, args.png)
    print(f"per-core rates: {result['per_core']}; steady tiles/s {result['mmray']['steady_tiles_per_s']}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--png", default=None)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated WxH level-0 sizes")
    p.add_argument("--workdir", default="/tmp/mmray-wsi-scale", help="slides and stores (slides are reused)")
    p.add_argument("--keep-slides", action="store_true", help="keep the slides (default: delete them at the end)")
    p.add_argument("--encoder", default="mobilenetv3_small_050")
    p.add_argument("--input-px", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--refresh", action="store_true", help="recompute per_core, steady rates and the PNG of --json")
    args = p.parse_args()
    if args.refresh:
        return refresh(args)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_before, rows = _load(), []
    for w, h in sizes:
        out = work / f"{w}x{h}"
        print(f"[{w} x {h}] writing the slide ...", flush=True)
        row = write_slide(out, w, h, seed=args.seed)
        print(f"[{w} x {h}] {row['file_mib']} MiB in {row['synth_s']} s, writer peak RSS "
              f"{row['writer_peak_rss_mib']} MiB; thumbnails ...", flush=True)
        row["baseline"] = thumbnail_rss(row["slide"], "baseline")
        row["mmray_thumbnail"] = thumbnail_rss(row["slide"], "mmray")
        print(f"[{w} x {h}] ingest ...", flush=True)
        row["mmray"] = ingest(out, encoder=args.encoder, input_px=args.input_px, batch_size=args.batch_size)
        m = row["mmray"]
        print(f"[{w} x {h}] {m['tiles']} tiles + {m['regions']} regions in {m['ingest_s']} s "
              f"({m['tiles_per_s']} /s); worker peak RSS {m['worker_peak_rss_mib']} MiB "
              f"({', '.join(m['worker_peak_roles'])}), driver {m['driver_peak_rss_mib']} MiB; thumbnail extra RSS "
              f"whole-level {row['baseline']['extra_rss_mib']:.0f} MiB vs blocks "
              f"{row['mmray_thumbnail']['extra_rss_mib']:.0f} MiB", flush=True)
        rows.append(row)
        Path(args.json).write_text(json.dumps({"sizes": rows}, indent=1) + "\n")  # partial results survive
    peaks = [r["mmray"]["worker_peak_rss_mib"] for r in rows]
    last = rows[-1]
    print("per-core rates on the largest slide ...", flush=True)
    rates = per_core_rates(last["slide"], encoder=args.encoder, input_px=args.input_px)
    print(f"per-core rates: {rates}", flush=True)
    result = {
        "baseline": {"thumbnail_extra_rss_mib": [round(r["baseline"]["extra_rss_mib"], 1) for r in rows],
                     "what": "tissue-mask thumbnail read as one whole pyramid level, then resized"},
        "mmray": {"worker_peak_rss_mib": peaks,
                  "driver_peak_rss_mib": [r["mmray"]["driver_peak_rss_mib"] for r in rows],
                  "tiles_per_s": [r["mmray"]["tiles_per_s"] for r in rows],
                  "steady_tiles_per_s": [r["mmray"].get("steady_tiles_per_s") for r in rows],
                  "writer_peak_rss_mib": [r["writer_peak_rss_mib"] for r in rows],
                  "thumbnail_extra_rss_mib": [round(r["mmray_thumbnail"]["extra_rss_mib"], 1) for r in rows]},
        "ratio": round(last["baseline"]["extra_rss_mib"] / max(last["mmray_thumbnail"]["extra_rss_mib"], 1.0), 1),
        "ratio_metric": "largest slide: whole-level thumbnail read extra RSS / block-by-block read extra RSS",
        "flatness": round(max(peaks) / min(peaks), 3),
        "flatness_by_role": flatness_by_role(rows),
        "flatness_metric": "largest / smallest per-worker peak RSS of ingest across slide sizes",
        "per_core": rates,
        "sizes": rows,
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "png")},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": _load()},
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.png:
        plot(result, args.png)
    if not args.keep_slides:
        for w, h in sizes:
            shutil.rmtree(work / f"{w}x{h}" / "cohort" / "slides", ignore_errors=True)
            (work / f"{w}x{h}" / "writer.json").unlink(missing_ok=True)
    print(f"per-worker peak RSS {peaks} MiB (flatness {result['flatness']}); tiles/s {result['mmray']['tiles_per_s']}; "
          f"thumbnail memory ratio {result['ratio']}x; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
