"""Cost curves: ingest, train and serve time against cohort size, with a fitted exponent per stage.

    python benchmarks/scaling.py --json scaling.json --png scaling.png [--patients 16,32,64] [--workdir DIR]

For each cohort size N, one ``mmray pipeline`` run in a fresh process (its own local Ray; settings: the
demo's ingest, a fixed training set: the single-modality baselines, attention fusion on all modalities
and PORPOISE on tiles + omics, 3 folds; every gene signature fanned out and registered; Serve deployed and
``N`` real HTTP predictions, one per patient) on a ``tiny``-profile synthetic cohort of N patients (slides,
CT with SEG, expression, mutations, copy number, clinical).  Stage times come from the pipeline's own
report; ``serve`` is the signature fan-out (fits and MLflow registration) plus deployment and the queries.

Per stage, ``seconds = a * N^b`` is fitted by least squares on log-log (``b``: the exponent; 1 is linear,
below 1 means fixed costs such as Ray start-up and actor pools still dominate, above 1 means something grows
faster than the cohort).  The JSON's ``baseline`` is linear extrapolation from the smallest cohort
(``seconds(N_min) * N / N_min``), ``mmray`` the measured seconds at the largest, ``ratio`` their quotient for
the whole pipeline (above 1: cheaper than linear).  The load average is recorded before and after every
run: on a shared machine the exponents carry its noise.

docs/scale.md turns these figures (with the slide and serving benchmarks) into the cost model.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"ingest": ["ingest"], "train": ["train"], "serve": ["signatures", "serve"]}

CONFIG = {
    "stages": ["synth", "ingest", "train", "signatures", "serve"],
    "synth": {"profile": "tiny", "seed": 5, "corrupt": 0},
    "ingest": {"modalities": [], "wsi": {"target_mpp": 2.0, "tile_px": 128, "region_px": 512,
                                         "encoder": {"name": "mobilenetv3_small_050", "input_px": 128,
                                                     "strict_weights": False, "batch_size": 64}}},
    "train": {"tasks": ["survival_cox"], "folds": {"n_folds": 3, "seed": 0},
              "modality_sets": {"clinical": ["clinical"], "expression": ["expression"],
                                "all": ["clinical", "expression", "mutations_cnv", "radiomics", "slide"],
                                "path_omics": ["tiles", "clinical", "expression"]},
              "models": [{"name": "single", "sets": ["clinical", "expression"]},
                         {"name": "attention_fusion", "sets": ["all"]},
                         {"name": "porpoise", "sets": ["path_omics"]}],
              "train": {"executor": "local", "max_epochs": 20, "patience": 5}, "lgbm": {"executor": "local"},
              "n_boot": 50, "mlflow": {"enabled": False}},
    "signatures": {"all_genes": True, "n_folds": 3, "n_boot": 0, "registry": {"gate": {"threshold": 0.0}}},
    "serve": {"host": "127.0.0.1", "replica_num_cpus": 0.5, "keep_running": False},
}

_RUN = r"""
import json, sys
from mmray import logs
from mmray.cli import init_ray
from mmray.config import load_config
from mmray.pipeline import PipelineConfig, run_pipeline
config, out = sys.argv[1], sys.argv[2]
logs.configure(verbose=False, log_file=None)
cfg = load_config(PipelineConfig, config, sys.argv[3:])
init_ray(None)
report = run_pipeline(cfg)
json.dump([{"stage": s.name, "status": s.status, "seconds": s.seconds, "detail": s.detail}
           for s in report.stages], open(out, "w"), indent=1)
print(report.text())
sys.exit(report.exit_code)
"""


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def fit_exponent(n: list[float], seconds: list[float]) -> dict:
    """Least-squares ``log(seconds) = log(a) + b log(N)``: ``{"exponent": b, "a": a, "r2": ...}``."""
    x, y = np.log(np.asarray(n, float)), np.log(np.maximum(np.asarray(seconds, float), 1e-3))
    b, log_a = np.polyfit(x, y, 1)
    pred = log_a + b * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return {"exponent": round(float(b), 3), "a_s": round(float(np.exp(log_a)), 4), "r2": round(r2, 3)}


def run_size(work: Path, n: int, *, port: int) -> dict:
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "scaling.yaml"
    cfg = json.loads(json.dumps(CONFIG))
    cfg["store"] = str(folder / "store")
    cfg["synth"].update(out=str(folder / "cohort"), patients=n)
    cfg["serve"].update(port=port, queries=n)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    load_before = _load()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUN, str(config), str(folder / "stages.json")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    (folder / "pipeline.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"pipeline for N={n} failed ({proc.returncode}); see {folder / 'pipeline.log'}")
    stages = {s["stage"]: s for s in json.loads((folder / "stages.json").read_text())}
    row = {"patients": n, "wall_s": round(time.perf_counter() - t0, 1), "loadavg_before": load_before,
           "loadavg_after": _load(), "stages": stages}
    for name, parts in STAGES.items():
        row[f"{name}_s"] = round(sum(stages[p]["seconds"] for p in parts if p in stages), 1)
    row["synth_s"] = round(stages["synth"]["seconds"], 1)
    return row


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["runs"]
    n = np.array([r["patients"] for r in rows], float)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in STAGES:
        y = [r[f"{name}_s"] for r in rows]
        fit = result["exponents"][name]
        ax.plot(n, y, "o", label=f"{name}: N^{fit['exponent']:.2f}")
        grid = np.linspace(n.min(), n.max(), 50)
        ax.plot(grid, fit["a_s"] * grid ** fit["exponent"], "-", alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="patients in the cohort", ylabel="stage time (s)",
           title="mmray pipeline: time against cohort size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--png", default=None)
    p.add_argument("--patients", default="16,32,64", help="comma-separated cohort sizes (3 or more)")
    p.add_argument("--workdir", default="/tmp/mmray-scaling")
    p.add_argument("--port", type=int, default=8620, help="Serve's HTTP port")
    p.add_argument("--keep", action="store_true", help="keep the cohorts and stores")
    args = p.parse_args()
    sizes = sorted(int(v) for v in args.patients.split(","))
    if len(sizes) < 3:
        raise SystemExit("give at least 3 cohort sizes, e.g. --patients 16,32,64")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in sizes:
        print(f"N={n}: mmray pipeline (synth, ingest, train, signatures, serve) ...", flush=True)
        runs.append(run_size(work, n, port=args.port))
        r = runs[-1]
        print(f"N={n}: ingest {r['ingest_s']} s, train {r['train_s']} s, serve {r['serve_s']} s "
              f"(load {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f})", flush=True)
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    exps = {name: fit_exponent(sizes, [r[f"{name}_s"] for r in runs]) for name in STAGES}
    total = [sum(r[f"{s}_s"] for s in STAGES) for r in runs]
    exps["total"] = fit_exponent(sizes, total)
    linear = total[0] * sizes[-1] / sizes[0]
    result = {
        "baseline": {"what": "linear extrapolation from the smallest cohort", "patients": sizes[-1],
                     "seconds": round(linear, 1)},
        "mmray": {"patients": sizes[-1], "seconds": round(total[-1], 1),
                  "exponents": {k: v["exponent"] for k, v in exps.items()}},
        "ratio": round(linear / total[-1], 3),
        "ratio_metric": "linear extrapolation / measured ingest+train+serve seconds at the largest cohort",
        "exponents": exps, "runs": runs, "config": CONFIG,
        "machine": {"cpus": os.cpu_count()},
    }
    Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.png:
        plot(result, args.png)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("exponents: " + ", ".join(f"{k} {v['exponent']} (r2 {v['r2']})" for k, v in exps.items())
          + f"; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
