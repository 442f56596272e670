"""A million tile embeddings: MIL bag reading and PORPOISE training with bounded memory.

    python benchmarks/bench_mil_scale.py --json mil_scale.json [--patients 150] [--tiles 1000000] [--dim 384]
        [--max-tiles 4096] [--workdir /tmp/mmray-mil-scale] [--keep]

Store: a synthetic survival cohort (:mod:`mmray.synth.survival_store`: labels and expression groups) and a
``wsi_tiles`` bag group of ``--tiles`` synthetic tile embeddings (``--dim``-d float32, one slide per
patient, bag sizes log-normal around the mean, real slides' spread; parts of at most 4096 rows, as the
tile sink writes them), written patient by patient.  Planted signal: a patient's tumour-tile fraction
grows with the WSI latent of their simulated risk, and tumour tiles are shifted along one direction.

Bag reading, baseline against mmray, each over every patient in a fresh process (peak RSS above the
process's RSS after imports, and time):

* baseline: each bag read whole (``FeatureStore.read_bag``: pandas, one array per row), stacked, then
  the per-patient seeded sample of ``--max-tiles`` drawn (how bags were read before);
* mmray: :class:`mmray.train.data.TileReader` (:class:`mmray.store.bag_sample.BagSampler`: the sample
  drawn first, only drawn rows kept as record batches stream past).

Training: ``mmray train`` with PORPOISE on ``[tiles, expression]`` (``--folds`` folds, ``--epochs``
epochs, ``max_tiles=--max-tiles``, the local executor), its whole process tree watched (peak RSS per
process), its wall time and the per-fold epochs and seconds from the results table.

JSON: ``baseline`` / ``mmray`` (bag reading: peak extra RSS, seconds, tiles/s), ``ratio`` (baseline over
mmray peak extra RSS), ``train`` (seconds, peak RSS of the driver and of every other process, C-index per
fold), ``store`` (tiles, patients, bytes, write seconds), ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmray.memory import TreePeaks  # noqa: E402

MMRAY = str(Path(sys.executable).parent / "mmray")
PART_ROWS = 4096

_READ = r"""
import json, sys, time, zlib
import numpy as np
from mmray.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from mmray.store import FeatureStore
from mmray.train.data import TileReader
mode, store, max_tiles = sys.argv[1], sys.argv[2], int(sys.argv[3])
st = FeatureStore(store)
bags = st.bags("wsi_tiles")
reader = TileReader(store=store, max_tiles=max_tiles)
reset_peak_rss(); base = rss_bytes(); t0 = time.perf_counter(); n = 0; check = 0.0
for pid, bag in zip(bags["patient_id"], bags["bag_id"]):
    if mode == "baseline":  # the whole bag in pandas, stacked, then sampled
        frame = st.read_bag("wsi_tiles", bag, columns=["embedding", "scale"])
        frame = frame[frame["scale"] == "tile"]
        tiles = np.stack([np.asarray(v, dtype=np.float32) for v in frame["embedding"]])
        if tiles.shape[0] > max_tiles:
            rng = np.random.default_rng([0, zlib.crc32(str(pid).encode())])
            tiles = tiles[np.sort(rng.choice(tiles.shape[0], max_tiles, replace=False))]
    else:
        tiles = reader.read(pid, [bag])
    n += tiles.shape[0]; check += float(tiles[:, 0].sum())
print(json.dumps({"extra_rss_mib": (peak_rss_bytes() - base) / 2**20, "seconds": time.perf_counter() - t0,
                  "tiles_read": n, "checksum": check, "patients": len(bags)}))
"""


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def bag_sizes(n_patients: int, total: int, *, seed: int) -> np.ndarray:
    """Per-patient tile counts: log-normal (sd 0.6), at least 500, summing to ``total`` or a little more."""
    rng = np.random.default_rng([seed, 5])
    raw = rng.lognormal(0.0, 0.6, n_patients)
    sizes = np.maximum(500, np.floor(raw / raw.sum() * total)).astype(int)
    sizes[np.argmax(sizes)] += max(0, total - int(sizes.sum()))
    return sizes


def write_store(work: Path, *, patients: int, tiles: int, dim: int, seed: int) -> dict:
    """Survival cohort groups plus the synthetic ``wsi_tiles`` bag group, written part by part."""
    import pandas as pd

    from mmray.store import FeatureStore
    from mmray.synth.latent import sample_patients
    from mmray.synth.profiles import get_profile
    from mmray.synth.survival_store import write_survival_cohort, write_survival_groups

    t0 = time.perf_counter()
    cohort = write_survival_cohort(work / "cohort", patients=patients, seed=seed)
    store = FeatureStore(str(work / "store"))
    write_survival_groups(cohort, store)
    labels = store.read_table("labels")
    z_wsi = {p.patient_id: p.z_wsi for p in sample_patients(patients, profile=get_profile("tiny"), seed=seed)}
    pids = [p for p in labels["patient_id"] if p in z_wsi]
    sizes = bag_sizes(len(pids), tiles, seed=seed)
    rng = np.random.default_rng([seed, 9])
    direction = rng.standard_normal(dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    pending, n_pending, part = [], 0, 0
    with store.open_version("wsi_tiles", kind="bag", bag_key="slide_id",
                            params={"source": "benchmarks/bench_mil_scale.py", "dim": dim}) as writer:
        def flush():
            nonlocal pending, n_pending, part
            if pending:
                writer.write_part(pd.concat(pending, ignore_index=True), part_name=f"part-{part:05d}")
                part += 1
            pending, n_pending = [], 0

        for pid, n in zip(pids, sizes):
            frac = 0.05 + 0.4 / (1.0 + np.exp(-1.5 * z_wsi[pid]))  # tumour-tile fraction grows with risk
            emb = rng.standard_normal((n, dim), dtype=np.float32)
            tumour = rng.random(n) < frac
            emb[tumour] += 1.5 * direction
            for start in range(0, n, PART_ROWS):
                stop = min(n, start + PART_ROWS)
                if n_pending + stop - start > PART_ROWS:
                    flush()
                pending.append(pd.DataFrame({
                    "patient_id": pid, "event_time": pd.Timestamp("1970-01-01", tz="UTC"), "slide_id": f"{pid}-DX1",
                    "scale": "tile", "x": np.arange(start, stop, dtype=np.int64) * 512, "y": 0,
                    "embedding": list(emb[start:stop])}))
                n_pending += stop - start
        flush()
    size = sum(f.stat().st_size for f in (work / "store" / "wsi_tiles").rglob("*.parquet"))
    return {"tiles": int(sizes.sum()), "patients": len(pids), "dim": dim, "parts": part,
            "bag_tiles_min_median_max": [int(sizes.min()), int(np.median(sizes)), int(sizes.max())],
            "wsi_tiles_mib": round(size / 2**20, 1), "write_s": round(time.perf_counter() - t0, 1)}


def read_bags(store: str, mode: str, max_tiles: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _READ, mode, store, str(max_tiles)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"bag reading ({mode}) failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["tiles_per_s"] = round(res["tiles_read"] / res["seconds"], 1)
    return res


def train(work: Path, *, folds: int, epochs: int, max_tiles: int, batch_size: int) -> dict:
    out = work / "train_out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [MMRAY, "train", "--store", str(work / "store"), f"output={out}", "tasks=[survival_cox]",
           f"folds.n_folds={folds}", "modality_sets={path_omics: [tiles, expression]}",
           "models=[{name: porpoise, sets: [path_omics]}]", "train.executor=local", f"train.max_epochs={epochs}",
           f"train.patience={epochs}", f"train.batch_size={batch_size}", f"max_tiles={max_tiles}", "n_boot=50",
           "mlflow.enabled=false"]
    log = (work / "train.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    watch = TreePeaks(proc.pid, interval_s=0.5).start()
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    watch.stop()
    log.close()
    if rc:
        raise SystemExit(f"train failed ({rc}); see {work / 'train.log'}")
    import pandas as pd

    res = pd.read_parquet(out / "results.parquet")
    procs = watch.table()
    others = [p for p in procs if p["kind"] != "driver"]
    return {"seconds": round(seconds, 1), "folds": res[["fold", "status", "epochs_run", "seconds", "harrell_c"]]
            .to_dict(orient="records"), "harrell_c_mean": round(float(res["harrell_c"].mean()), 3),
            "epochs_total": int(res["epochs_run"].sum()),
            "seconds_per_epoch": round(float(res["seconds"].sum() / max(res["epochs_run"].sum(), 1)), 1),
            "driver_peak_rss_mib": next(p["peak_rss_mib"] for p in procs if p["kind"] == "driver"),
            "driver_peak_anon_mib": next(p["peak_anon_mib"] for p in procs if p["kind"] == "driver"),
            "driver_peak_shmem_mib": next(p["peak_shmem_mib"] for p in procs if p["kind"] == "driver"),
            "other_peak_rss_mib": max((p["peak_rss_mib"] for p in others), default=None),
            "other_peak_anon_mib": max((p["peak_anon_mib"] for p in others), default=None),
            "processes": procs[:12]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--patients", type=int, default=150)
    p.add_argument("--tiles", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--max-tiles", type=int, default=4096)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16, help="patients per training batch")
    p.add_argument("--workdir", default="/tmp/mmray-mil-scale")
    p.add_argument("--keep", action="store_true", help="keep the store (default: delete it at the end)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work = Path(args.workdir)
    load_before = _load()
    if (work / "store_info.json").exists():
        info = json.loads((work / "store_info.json").read_text())
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"writing {args.tiles:,} tile embeddings ({args.dim}-d) for {args.patients} patients ...", flush=True)
        info = write_store(work, patients=args.patients, tiles=args.tiles, dim=args.dim, seed=args.seed)
        (work / "store_info.json").write_text(json.dumps(info))
    print(f"store: {info}", flush=True)
    store = str(work / "store")
    base = read_bags(store, "baseline", args.max_tiles)
    print(f"baseline (whole bags, then sample): {base}", flush=True)
    mm = read_bags(store, "mmray", args.max_tiles)
    print(f"mmray (sampled reads): {mm}", flush=True)
    result = {"baseline": base, "mmray": mm,
              "ratio": round(base["extra_rss_mib"] / max(mm["extra_rss_mib"], 1.0), 2),
              "ratio_metric": "bag reading over every patient: baseline peak extra RSS / mmray peak extra RSS",
              "speed_ratio": round(mm["tiles_per_s"] / base["tiles_per_s"], 2),
              "store": info, "config": {k: v for k, v in vars(args).items() if k != "json"}}
    if not args.skip_train:
        print(f"mmray train: PORPOISE on [tiles, expression], {args.folds} folds x {args.epochs} epochs ...",
              flush=True)
        result["train"] = train(work, folds=args.folds, epochs=args.epochs, max_tiles=args.max_tiles,
                                batch_size=args.batch_size)
        t = result["train"]
        print(f"train: {t['seconds']} s, {t['seconds_per_epoch']} s/epoch, driver peak RSS "
              f"{t['driver_peak_rss_mib']} MiB (anonymous {t['driver_peak_anon_mib']}, shared "
              f"{t['driver_peak_shmem_mib']}), other processes <= {t['other_peak_rss_mib']} MiB "
              f"(anonymous {t['other_peak_anon_mib']}), "
              f"C-index {t['harrell_c_mean']}", flush=True)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": _load()}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bag reading peak extra RSS: baseline {base['extra_rss_mib']:.0f} MiB, mmray {mm['extra_rss_mib']:.0f} MiB "
          f"({result['ratio']}x); wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
