"""Federated vs centralised training of the same model on the same folds: pooled C-index and wall time.

    .venv/bin/python benchmarks/bench_federated.py --json fed.json [--profile demo --patients 150 --seed 7]
        [--sites 3] [--workdir DIR] [key=value federated overrides, e.g. algorithm=fedavg rounds=30]

Data: the tables of the synthetic cohort ``(profile, patients, seed)``
(:func:`mmray.synth.survival_store.write_survival_cohort`: the same
generator and draws as ``mmray synth``, without writing slides or CT),
split into ``--sites`` institutions by tissue source site
(:func:`mmray.synth.sites.split_sites`), each ingested into its own store
(clinical, expression, mutations, CNV).

* ``mmray``: :func:`mmray.train.federated.run_federated` with
  ``ray_jobs/configs/federated.yaml`` and the overrides (site actors pinned
  by ``site_<name>`` resources on a local Ray): the pooled (site-stratified)
  Harrell C of each CV fold, and the same fold models scored on the pooled
  test rows without stratification (possible here only because the
  benchmark can read every site).
* ``baseline``: :func:`mmray.train.federated_reference.centralised_reference`:
  the same model trained on the pooled rows of the same fold splits
  (ordinary centralised path), scored both ways.

``ratio`` is federated over centralised mean site-stratified C; the JSON also
has the per-fold values, the differences, and each side's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def build_sites(root: Path, *, profile: str, patients: int, seed: int, n_sites: int) -> dict[str, str]:
    from mmray.ingest.pseudonym import identity
    from mmray.ingest.run import IngestConfig, run_ingest
    from mmray.synth.sites import split_sites
    from mmray.synth.survival_store import write_survival_cohort

    cohort = write_survival_cohort(root / "cohort", patients=patients, seed=seed, profile=profile)
    spec = yaml.safe_load(cohort.read_text())
    spec.update(mutations="mutations.maf", cnv="cnv.tsv")
    cohort.write_text(yaml.safe_dump(spec, sort_keys=False))
    stores = {}
    for name, site in split_sites(cohort.parent, n_sites).items():
        stores[name] = str(root / "stores" / name)
        run_ingest(IngestConfig(cohort=site["cohort"], store=stores[name],
                                modalities=("clinical", "expression", "mutations", "cnv")), patient_key=identity)
    return stores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True)
    p.add_argument("--profile", default="demo")
    p.add_argument("--patients", type=int, default=150)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--workdir", default=None, help="keep the cohort and stores here (default: a temp folder)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ray

    from mmray.config import load_config
    from mmray.train.federated import run_federated
    from mmray.train.federated_config import FederatedConfig
    from mmray.train.federated_reference import centralised_reference, federated_scores, site_data

    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmray-bench-fed-"))
    t0 = time.perf_counter()
    stores = (json.loads((root / "stores.json").read_text()) if (root / "stores.json").exists()
              else build_sites(root, profile=args.profile, patients=args.patients, seed=args.seed, n_sites=args.sites))
    (root / "stores.json").write_text(json.dumps(stores))
    setup_s = time.perf_counter() - t0
    ov = [f"sites.{n}.store={s}" for n, s in stores.items()] + [f"sites.{n}.cpus=0.5" for n in stores]
    ov += [f"store={root / 'coordinator'}", "register.enabled=false", *args.overrides]
    cfg = load_config(FederatedConfig, "ray_jobs/configs/federated.yaml", ov)
    ray.init(num_cpus=args.num_cpus, resources={f"site_{n}": 1 for n in stores}, include_dashboard=False,
             log_to_driver=False)
    t0 = time.perf_counter()
    report = run_federated(cfg)
    fed_s = time.perf_counter() - t0
    ray.shutdown()
    sites = site_data(cfg)
    fed = [{"fold": f.fold, "c_pooled": f.test["c_pooled"], **{f"unstratified_{k}": v for k, v in
                                                               federated_scores(f, sites).items()}}
           for f in report.fits]
    t0 = time.perf_counter()
    ref = centralised_reference(cfg)
    ref_s = time.perf_counter() - t0
    fc = float(np.mean([f["c_pooled"] for f in fed]))
    rc = float(np.mean([r["c_pooled"] for r in ref]))
    out = {"benchmark": "federated_vs_centralised", "metric": "site-stratified Harrell C, mean over CV folds",
           "baseline": rc, "mmray": fc, "ratio": fc / rc, "difference": fc - rc,
           "baseline_c_global": float(np.mean([r["c_global"] for r in ref])),
           "mmray_c_global": float(np.mean([f["unstratified_c_global"] for f in fed])),
           "folds_mmray": fed, "folds_baseline": ref, "site_c_mean": report.summary["site_c_mean"],
           "sites": {n: v["n_patients"] for n, v in report.sites.items()},
           "rounds_missing_updates": int(report.rounds["n_dropped"].sum()),
           "seconds": {"setup": setup_s, "mmray": fed_s, "baseline": ref_s},
           "config": {"profile": args.profile, "patients": args.patients, "seed": args.seed, "sites": args.sites,
                      "overrides": args.overrides, "model": cfg.model, "algorithm": cfg.algorithm,
                      "rounds": cfg.rounds, "local_epochs": cfg.local_epochs},
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": open("/proc/loadavg").read().split()[:3]}}
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps({k: out[k] for k in ("baseline", "mmray", "difference", "baseline_c_global", "mmray_c_global",
                                          "seconds")}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
