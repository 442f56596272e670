"""Training throughput on Ray Train: 1 vs 2 DDP workers (TorchTrainer), and Ray's LightGBM vs plain lightgbm.

    .venv/bin/python benchmarks/bench_train.py --json train.json [--patients 16384] [--epochs 5] [--num-cpus 2]

Data: ``mmray.synth.arrays.simple_cohort`` (planted signal; clinical 16,
expression 256, radiomics 32 features; 20% of modalities missing), the same
arrays for every run.

* Torch: ``early_fusion`` for ``survival_cox`` (batch 256 per worker, Cox
  risk sets gathered over the workers) through :func:`mmray.train.ray_torch.fit_torch`
  with ``executor="ray_train"``: the rows stream from a Ray Dataset, split
  across the workers with ``get_dataset_shard``.  Samples/s of one epoch =
  training rows / rank 0's time for the training pass (validation excluded);
  the first epoch (Ray Data and DDP warm-up) is reported apart, the headline
  is the median of the later epochs.  ``baseline`` is 1 worker, ``mmray`` 2
  workers, each with ``--threads`` torch threads; ``one_worker_all_threads``
  is 1 worker with ``--num-cpus`` threads, the fair single-process
  alternative on the same cores.  Each run's wall time includes Ray Train's
  start (worker group, process group) and is reported too.
* LightGBM: HEEC's Cox objective on the same table with ``--rows`` rows
  (``simple_cohort`` again), ``--rounds`` boosting rounds, no early stopping.
  ``baseline``: ``lightgbm.train`` in this process with ``--num-cpus``
  threads; ``mmray``: Ray Train's ``LightGBMTrainer`` with 2 workers of 1
  thread (data-parallel).  Rows x rounds / training seconds (inside the
  worker, excluding Ray start and data transfer) is the headline; wall times
  are reported.

``ratio`` is mmray over baseline on the torch headline (2 vs 1 workers);
``ratio_lightgbm`` the same for LightGBM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmray.synth.arrays import simple_cohort
from mmray.train import data as D

DIMS = {"clinical": 16, "expression": 256, "radiomics": 32}



def bench_torch(c, *, workers: int, threads: int, epochs: int, workdir: Path, name: str) -> dict:
    from mmray.train.ray_torch import TorchSpec, fit_torch

    n = c.n
    n_val = max(64, n // 8)
    fit, val = c.prepared(np.arange(n - n_val)), c.prepared(np.arange(n - n_val, n))
    spec = TorchSpec(model="early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1, batch_size=256,
                     max_epochs=epochs, patience=10 * epochs, lr=1e-3, seed=0)
    t0 = time.perf_counter()
    res = fit_torch(spec, train=D.prepared_columns(fit, pad_to_multiple=workers), val=D.prepared_columns(val),
                    run_dir=workdir / name, workers=workers, threads_per_worker=threads, max_failures=0)
    wall = time.perf_counter() - t0
    rows = n - n_val
    rates = [rows / h["train_seconds"] for h in res.history]
    later = rates[1:] or rates
    return {"samples_per_s": statistics.median(later), "first_epoch_samples_per_s": rates[0],
            "epoch_samples_per_s_all": rates, "train_rows": rows, "workers": workers, "threads_per_worker": threads,
            "run_wall_s": wall, "final_train_loss": res.history[-1]["train_loss"]}


def _lgbm_table(rows: int, seed: int):
    from mmray.models.heec import HEEC

    c = simple_cohort(rows, seed=seed, dims={"clinical": 16, "expression": 184}, effect=1.0)
    cols = {}
    for m in ("clinical", "expression"):
        x = np.where(c.present[m][:, None], c.features[m], np.nan)
        for j, name in enumerate(c.columns[m]):
            cols[name] = x[:, j]
    X = pd.DataFrame(cols)
    return X, c, HEEC


def bench_lightgbm(X, c, HEEC, *, rounds: int, threads: int, workdir: Path) -> tuple[dict, dict]:
    import lightgbm as lgb

    from mmray.train.ray_lgbm import fit_heec

    kw = {"n_estimators": rounds, "screen_alpha": 1.0, "max_genomic": None, "seed": 0, "early_stopping_rounds": 0}
    plain = HEEC(task="survival_cox", num_threads=threads, **kw)
    plain.screen_columns(X, time_days=c.time_days, event=c.event)
    data = lgb.Dataset(plain.encode(X).to_numpy(), label=plain.label(time_days=c.time_days, event=c.event))
    t0 = time.perf_counter()
    booster = lgb.train(plain.params, data, num_boost_round=rounds)
    plain_s = time.perf_counter() - t0
    base = {"train_rows_x_rounds_per_s": len(X) * rounds / plain_s, "train_s": plain_s, "threads": threads,
            "rows": len(X), "features": X.shape[1], "rounds": booster.num_trees()}
    ray_heec = HEEC(task="survival_cox", **kw)
    t0 = time.perf_counter()
    info = fit_heec(ray_heec, X, time_days=c.time_days, event=c.event, workers=2, run_dir=workdir / "lgbm",
                    threads_per_worker=1)
    wall = time.perf_counter() - t0
    mm = {"train_rows_x_rounds_per_s": len(X) * rounds / info["train_seconds"], "train_s": info["train_seconds"],
          "run_wall_s": wall, "workers": 2, "threads_per_worker": 1, "rows": len(X), "rounds": info["num_trees"]}
    return base, mm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--patients", type=int, default=16384)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per DDP worker")
    ap.add_argument("--rows", type=int, default=20000, help="LightGBM table rows")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    c = simple_cohort(args.patients, seed=0, dims=DIMS, effect=0.8, p_missing=0.2)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        one = bench_torch(c, workers=1, threads=args.threads, epochs=args.epochs, workdir=tmp, name="w1")
        two = bench_torch(c, workers=2, threads=args.threads, epochs=args.epochs, workdir=tmp, name="w2")
        one_all = bench_torch(c, workers=1, threads=args.num_cpus, epochs=args.epochs, workdir=tmp, name="w1all")
        X, cc, HEEC = _lgbm_table(args.rows, seed=1)
        lg_base, lg_mm = bench_lightgbm(X, cc, HEEC, rounds=args.rounds, threads=args.num_cpus, workdir=tmp)
    out["baseline"] = {"torch_1_worker": one, "lightgbm_plain": lg_base}
    out["mmray"] = {"torch_2_workers": two, "lightgbm_ray_train_2_workers": lg_mm}
    out["ratio"] = two["samples_per_s"] / one["samples_per_s"]
    out["ratio_lightgbm"] = lg_mm["train_rows_x_rounds_per_s"] / lg_base["train_rows_x_rounds_per_s"]
    out["one_worker_all_threads"] = one_all
    out["ratio_2_workers_vs_1_worker_all_threads"] = two["samples_per_s"] / one_all["samples_per_s"]
    out["setup"] = {"patients": args.patients, "epochs": args.epochs, "model": "early_fusion", "task": "survival_cox",
                    "batch_size_per_worker": 256, "dims": DIMS, "num_cpus": args.num_cpus,
                    "cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
                    "ray_start_s": ray_start, "python": platform.python_version(), "ray": ray.__version__}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps({"ratio": out["ratio"], "ratio_lightgbm": out["ratio_lightgbm"],
                      "torch_samples_per_s": {"1w": one["samples_per_s"], "2w": two["samples_per_s"],
                                              "1w_all_threads": one_all["samples_per_s"]},
                      "lightgbm_rows_x_rounds_per_s": {"plain": lg_base["train_rows_x_rounds_per_s"],
                                                       "ray": lg_mm["train_rows_x_rounds_per_s"]}}, indent=2))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
