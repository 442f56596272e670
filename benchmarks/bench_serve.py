"""Serving latency: load-from-registry per request (baseline) vs mmray's multiplexed model cache.

    python benchmarks/bench_serve.py --json serve.json [--models 200] [--requests 3000] [--rounds 3]

Setup (timed, reported under ``setup``): a synthetic survival cohort
(:mod:`mmray.synth.survival_store`, ``--patients`` patients, tiny profile),
``--models`` random gene signatures drawn from its gene universe, and the real
fan-out (:func:`mmray.registry.signatures.run_signatures`: Ray tasks, MLflow
sqlite registry) with the gate at 0 so every signature model is registered
with the ``champion`` alias (cheap: penalised Cox on a few genes).

Two Ray Serve applications run side by side on the same local Ray, with the
same replica settings, and answer the same JSON bodies over HTTP on 127.0.0.1:

* baseline (``/baseline/v1/predict``): for every request, resolve
  ``models:/<name>@champion`` and load the model from the MLflow registry
  (``mlflow.pyfunc.load_model``), then predict;
* mmray (``/v1/predict``): :mod:`mmray.serve.app`, ``@serve.multiplexed``
  with ``--max-models`` models per replica (LRU), routed by the
  ``serve_multiplexed_model_id`` header.

The client: ``--concurrency`` asyncio workers sharing an aiohttp session, model
choice Zipf(``--zipf-s``) over the models (the same seeded sequence for both
sides), one patient per request (the model's features, from a real row of the
expression group), bounded by ``--requests`` (baseline: ``--baseline-requests``)
and ``--max-seconds`` per side. Cache hit rate comes from the mmray
deployment's own counters (``GET /v1/stats``: model loads vs requests).

mmray first runs the request sequence once cold (``mmray_cold``: every
model's first use, its artifacts downloaded from the registry). Then
``--rounds`` rounds, each the baseline (``--baseline-requests``) and then mmray
in steady state (``--requests``: the same sequence again; misses are LRU
evictions reloaded from the replica's local copy), so both sides of a round see
the same background load (a shared 2-core machine drifts by tens of percent
over minutes). The headline is the round with the median ratio; every round is
in the JSON.

JSON: ``baseline`` and ``mmray`` (``p50_ms``, ``p99_ms``, ``mean_ms``,
``requests_per_s``, ``requests``, ``errors``; mmray adds ``cache_hit_rate``,
``model_loads``), ``ratio`` = baseline p50 / mmray p50 (higher is better),
``ratio_all_rounds``, ``rounds``, plus ``mmray_cold``, ``setup``, ``config``
and ``machine``.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

baseline_api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


class BaselineLoadPerRequest:
    """Loads the champion from the registry on every request (no cache), same parsing and output."""

    def __init__(self, tracking_uri: str):
        import mlflow

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)

    @baseline_api.post("/v1/predict")
    async def predict(self, request: Request):
        from mmray.registry.pyfunc import load_pyfunc
        from mmray.serve.schemas import MODEL_HEADER, ApiError, model_id, parse_body, parse_inputs, prediction_body

        try:
            body = parse_body(await request.body())
            name = model_id(request.headers.get(MODEL_HEADER), body)
            model = await asyncio.to_thread(load_pyfunc, f"models:/{name}@champion")
            x = parse_inputs(body, model.features)
        except ApiError as e:
            return JSONResponse(status_code=e.status, content=e.body())
        risk, surv = model.predict_arrays(x)
        return prediction_body(name=name, version="champion", risk=risk, survival=surv, times_days=model.times_days)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_models(workdir: Path, *, n_models: int, patients: int, seed: int) -> dict:
    from mmray.config import load_config
    from mmray.registry.signatures import SignaturesConfig, run_signatures
    from mmray.store import FeatureStore
    from mmray.synth.survival_store import random_gmt, write_survival_cohort, write_survival_groups

    t0 = time.perf_counter()
    cohort = write_survival_cohort(workdir / "cohort", patients=patients, seed=seed)
    store = str(workdir / "store")
    write_survival_groups(cohort, store)
    random_gmt(workdir / "bench.gmt", n_sets=n_models, n_genes=300, seed=seed, min_size=5, max_size=25)
    t1 = time.perf_counter()
    cfg = load_config(SignaturesConfig, None, [
        f"cohort={cohort}", f"store={store}", f"gmt={workdir / 'bench.gmt'}", "all_genes=false", "n_boot=0",
        "model_prefix=bench__", "registry.gate.threshold=0.0", "registry.experiment=bench-serve"])
    report = run_signatures(cfg)
    counts = report.counts()
    if counts["registered"] != n_models:
        raise SystemExit(f"expected {n_models} registered models, got {counts}:\n{report.table()}")
    expr = FeatureStore(store).read_table("expression").drop(columns=["patient_id", "event_time"])
    return {"store": store, "expression": expr, "write_s": t1 - t0, "fanout_s": time.perf_counter() - t1,
            "counts": counts}


def zipf_sequence(n_models: int, n: int, *, s: float, seed: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n_models + 1) ** s
    rng = np.random.default_rng(seed)
    return rng.choice(n_models, size=n, p=p / p.sum())


def drive(url: str, bodies: list[tuple[str, bytes]], *, concurrency: int, max_seconds: float) -> dict:
    """POST every (model, JSON body) with ``concurrency`` asyncio workers (aiohttp, one connection each)."""
    return asyncio.run(_drive(url, bodies, concurrency=concurrency, max_seconds=max_seconds))


async def _drive(url: str, bodies, *, concurrency: int, max_seconds: float) -> dict:
    import aiohttp

    lat = np.full(len(bodies), np.nan)
    status = np.zeros(len(bodies), dtype=int)
    queue = iter(range(len(bodies)))
    deadline = time.perf_counter() + max_seconds

    async def worker(session):
        for i in queue:  # a shared iterator: each index goes to one worker
            if time.perf_counter() > deadline:
                return
            model, data = bodies[i]
            t = time.perf_counter()
            try:
                async with session.post(url, data=data, headers={"serve_multiplexed_model_id": model,
                                                                 "Content-Type": "application/json"}) as r:
                    await r.read()
                    status[i] = r.status
            except aiohttp.ClientError:
                status[i] = -1
            lat[i] = (time.perf_counter() - t) * 1000

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    done = ~np.isnan(lat)
    ok = done & (status == 200)
    return {"p50_ms": float(np.percentile(lat[done], 50)), "p99_ms": float(np.percentile(lat[done], 99)),
            "mean_ms": float(np.mean(lat[done])), "requests_per_s": float(done.sum() / wall),
            "requests": int(done.sum()), "errors": int(done.sum() - ok.sum()), "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--models", type=int, default=200, help="signature models to register and serve")
    p.add_argument("--requests", type=int, default=3000, help="mmray requests")
    p.add_argument("--baseline-requests", type=int, default=600, help="baseline requests (it is slow)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="cap per side")
    p.add_argument("--rounds", type=int, default=3, help="interleaved baseline/mmray rounds (median is the headline)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--zipf-s", type=float, default=1.1)
    p.add_argument("--max-models", type=int, default=64, help="mmray: models per replica (LRU)")
    p.add_argument("--replica-cpus", type=float, default=0.5)
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--workdir", default=None, help="folder for cohort, store and registry (default: temp)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--serve-defaults", action="store_true",
                   help="Ray Serve's default data plane for both sides (mmray's serve.throughput_optimized off)")
    args = p.parse_args()

    import ray
    import requests
    from ray import serve

    from mmray.config import load_config
    from mmray.registry.config import RegistryConfig, resolve_tracking
    from mmray.serve.app import start_serve
    from mmray.serve.config import ServeConfig

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serve-"))
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        print(f"registering {args.models} signature models in {workdir} ...", flush=True)
        setup = setup_models(workdir, n_models=args.models, patients=args.patients, seed=args.seed)
        port = _free_port()
        cfg = load_config(ServeConfig, None, [f"store={setup['store']}", f"port={port}", "model_prefix=bench__",
                                              f"max_models_per_replica={args.max_models}",
                                              f"replica_num_cpus={args.replica_cpus}", "alias_refresh_s=3600",
                                              "access_log=false",
                                              f"throughput_optimized={str(not args.serve_defaults).lower()}"])
        url = start_serve(cfg)
        tracking_uri, _ = resolve_tracking(RegistryConfig(), store=setup["store"])
        base = serve.deployment(serve.ingress(baseline_api)(BaselineLoadPerRequest)).options(
            name="Baseline", ray_actor_options={"num_cpus": args.replica_cpus}, max_ongoing_requests=64)
        serve.run(base.bind(tracking_uri), name="baseline", route_prefix="/baseline", blocking=False,
                  logging_config={"enable_access_log": False})
        models = requests.get(f"{url}/v1/models", timeout=120).json()["models"]
        models.sort(key=lambda m: m["name"])
        row = setup["expression"].iloc[0]
        bodies = [json.dumps({"instances": [{f: float(row[f]) for f in m["features"]}]}).encode() for m in models]
        n = max(args.requests, args.baseline_requests)
        seq = zipf_sequence(len(models), n, s=args.zipf_s, seed=args.seed)
        work = [(models[k]["name"], bodies[k]) for k in seq]
        for side in (f"{url}/v1/predict", f"{url}/baseline/v1/predict"):  # warm both servers' code paths
            for name, data in work[:3]:
                requests.post(side, data=data, headers={"serve_multiplexed_model_id": name}, timeout=60)

        def run_mmray(label: str) -> dict:
            before = requests.get(f"{url}/v1/stats", timeout=30).json()
            print(f"mmray ({label}): {args.requests} requests ...", flush=True)
            res = drive(f"{url}/v1/predict", work[:args.requests], concurrency=args.concurrency,
                        max_seconds=args.max_seconds)
            after = requests.get(f"{url}/v1/stats", timeout=30).json()
            reqs, loads = after["requests"] - before["requests"], after["loads"] - before["loads"]
            res.update({"cache_hit_rate": 1.0 - loads / reqs if reqs else None, "model_loads": loads,
                        "stats_requests": reqs, "models_loaded_at_end": len(after["loaded_models"])})
            return res

        cold = run_mmray("cold: first use of every model")
        rounds = []
        for i in range(args.rounds):  # paired rounds: both sides see the same background load
            print(f"[{i + 1}/{args.rounds}] baseline: {args.baseline_requests} requests ...", flush=True)
            base = drive(f"{url}/baseline/v1/predict", work[:args.baseline_requests],
                         concurrency=args.concurrency, max_seconds=args.max_seconds)
            base["model_loads"] = base["requests"]
            mm = run_mmray(f"round {i + 1}/{args.rounds}, steady state")
            rounds.append({"baseline": base, "mmray": mm, "ratio": base["p50_ms"] / mm["p50_ms"]})
            print(f"[{i + 1}/{args.rounds}] p50 baseline {base['p50_ms']:.1f} ms, mmray {mm['p50_ms']:.1f} ms: "
                  f"{rounds[-1]['ratio']:.1f}x", flush=True)
        ratios = [r["ratio"] for r in rounds]
        pick = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]
        result = {
            "baseline": rounds[pick]["baseline"], "mmray": rounds[pick]["mmray"], "mmray_cold": cold,
            "ratio": ratios[pick], "ratio_metric": "baseline p50_ms / mmray p50_ms",
            "ratio_all_rounds": [round(r, 2) for r in ratios],
            "headline": "the interleaved round with the median ratio", "rounds": rounds,
            "setup": {"models": args.models, "patients": args.patients, "write_s": setup["write_s"],
                      "fanout_register_s": setup["fanout_s"], "registered": setup["counts"]["registered"]},
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": {"cpus": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU")},
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    b, m = result["baseline"], result["mmray"]
    errors = sum(r[side]["errors"] for r in result["rounds"] for side in ("baseline", "mmray"))
    print(f"baseline: p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, {b['requests_per_s']:.1f} req/s, "
          f"{b['errors']} errors of {b['requests']}")
    c = result["mmray_cold"]
    print(f"mmray (cold, first use of each model): p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, "
          f"{c['requests_per_s']:.1f} req/s, cache hit rate {c['cache_hit_rate']:.3f}")
    print(f"mmray:    p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, {m['requests_per_s']:.1f} req/s, "
          f"{m['errors']} errors of {m['requests']}, cache hit rate {m['cache_hit_rate']:.3f}")
    print(f"ratio (baseline p50 / mmray p50), median of rounds {result['ratio_all_rounds']}: {result['ratio']:.1f}x; "
          f"setup {result['setup']}; wrote {args.json}")
    return 0 if errors == 0 and c["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
