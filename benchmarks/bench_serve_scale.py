"""A thousand signature models behind one endpoint: latency, cache hit rate and load time against
``max_models_per_replica``, with the load-per-request baseline at every point.

    python benchmarks/bench_serve_scale.py --json serve_scale.json --png serve_scale.png [--models 1000]
        [--max-models 8,32,128,512,1000] [--requests 2000] [--baseline-requests 300] [--workdir DIR]

Setup (as benchmarks/bench_serve.py, whose helpers it uses): ``--models`` random gene signatures on a
synthetic survival cohort, fanned out by :func:`mmray.registry.signatures.run_signatures` (Ray tasks,
MLflow sqlite registry, gate at 0: every model registered as ``champion``).  ``--workdir`` keeps the
registry between runs (the fan-out of 1,000 models takes minutes on 2 cores).

Then, on one local Ray with one Serve replica (``--replica-cpus``):

1. every model once, in name order (``all_models``: the endpoint answers all ``--models`` models; each
   load here comes from the registry);
2. for each ``max_models_per_replica`` M (the app redeployed with M, so its cache starts empty): the
   baseline (``--baseline-requests``: each request resolves and loads the champion from MLflow, then
   predicts) and mmray's ``@serve.multiplexed`` cache on the same Zipf(``--zipf-s``) sequence of models
   (``--requests``; one patient per request, the model's features from a real expression row), cold
   (first pass: first uses load from the registry) and steady (the same sequence again: misses are LRU
   evictions, reloaded from the replica's local copy).  Hit rate and load time come from the replica's
   own counters (``GET /v1/stats``).

JSON: ``curve`` (per M: p50/p99/mean ms, requests/s, errors, cache hit rate, model loads, mean load ms
by source, for the cold and steady passes, and the paired baseline p50/p99), ``baseline`` and ``mmray``
(the point with the largest M), ``ratio`` (baseline p50 over mmray steady p50 there) and
``ratio_by_max_models``, ``all_models`` (requests, errors, distinct models answered), ``setup``,
``machine`` (load average before and after).  PNG: p50/p99 and hit rate against M.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_serve as bs  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

# The baseline is defined here, in the script Ray runs as __main__ (as bench_serve.py does): Serve's
# class-based view must see the FastAPI app and the class pickled together; imported from bench_serve,
# the replica's routes lost their `self` (every request: 422, `self` a missing query field).
baseline_api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


class BaselineLoadPerRequest:
    """Loads the champion from the registry on every request (no cache): bench_serve.py's baseline."""

    def __init__(self, tracking_uri: str):
        import mlflow

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)

    @baseline_api.post("/v1/predict")
    async def predict(self, request: Request):
        import asyncio

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


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def setup(workdir: Path, *, n_models: int, patients: int, seed: int) -> dict:
    """The registered models (kept in ``workdir``: a rerun reuses them)."""
    import pandas as pd

    done = workdir / "setup.json"
    if done.exists():
        info = json.loads(done.read_text())
        if info["models"] == n_models:
            info["expression"] = pd.read_parquet(workdir / "expression.parquet")
            return info
    workdir.mkdir(parents=True, exist_ok=True)
    got = bs.setup_models(workdir, n_models=n_models, patients=patients, seed=seed)
    got["expression"].to_parquet(workdir / "expression.parquet")
    info = {"models": n_models, "store": got["store"], "write_s": round(got["write_s"], 1),
            "fanout_register_s": round(got["fanout_s"], 1), "registered": got["counts"]["registered"]}
    done.write_text(json.dumps(info))
    info["expression"] = got["expression"]
    return info


def deploy(store: str, *, port: int, max_models: int, replica_cpus: float) -> str:
    from mmray.config import load_config
    from mmray.serve.app import start_serve
    from mmray.serve.config import ServeConfig

    cfg = load_config(ServeConfig, None, [f"store={store}", f"port={port}", "model_prefix=bench__",
                                          f"max_models_per_replica={max_models}", f"replica_num_cpus={replica_cpus}",
                                          "alias_refresh_s=3600", "access_log=false"])
    return start_serve(cfg)


def stats_delta(url: str, before: dict) -> dict:
    import requests

    after = requests.get(f"{url}/v1/stats", timeout=60).json()
    reqs, loads = after["requests"] - before["requests"], after["loads"] - before["loads"]
    local = after["local_reloads"] - before["local_reloads"]
    ms = {k: after["load_ms_total"][k] - before["load_ms_total"][k] for k in ("registry", "local")}
    return {"cache_hit_rate": round(1.0 - loads / reqs, 4) if reqs else None, "model_loads": loads,
            "registry_loads": loads - local, "local_reloads": local,
            "registry_load_ms_mean": round(ms["registry"] / (loads - local), 2) if loads - local else None,
            "local_load_ms_mean": round(ms["local"] / local, 3) if local else None,
            "models_loaded_at_end": len(after["loaded_models"])}


def run_mmray(url: str, work, *, concurrency: int, max_seconds: float) -> dict:
    import requests

    before = requests.get(f"{url}/v1/stats", timeout=60).json()
    res = bs.drive(f"{url}/v1/predict", work, concurrency=concurrency, max_seconds=max_seconds)
    res.update(stats_delta(url, before))
    return res


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    m = [c["max_models"] for c in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(m, [c["steady"]["p50_ms"] for c in curve], "o-", label="mmray p50 (steady)")
    a.plot(m, [c["steady"]["p99_ms"] for c in curve], "o--", label="mmray p99 (steady)")
    a.plot(m, [c["cold"]["p50_ms"] for c in curve], "s:", label="mmray p50 (cold)")
    a.plot(m, [c["baseline"]["p50_ms"] for c in curve], "x-", label="load per request p50")
    a.plot(m, [c["baseline"]["p99_ms"] for c in curve], "x--", label="load per request p99")
    a.set(xscale="log", yscale="log", xlabel="max_models_per_replica", ylabel="latency (ms)",
          title=f"{result['setup']['models']} models, Zipf s={result['config']['zipf_s']}")
    a.legend(fontsize=8)
    b.plot(m, [c["steady"]["cache_hit_rate"] for c in curve], "o-", label="steady")
    b.plot(m, [c["cold"]["cache_hit_rate"] for c in curve], "s:", label="cold")
    b.set(xscale="log", xlabel="max_models_per_replica", ylabel="cache hit rate", ylim=(0, 1.02),
          title="Model cache hit rate")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--png", default=None)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--max-models", default="8,32,128,512,1000", help="comma-separated max_models_per_replica values")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--baseline-requests", type=int, default=300)
    p.add_argument("--max-seconds", type=float, default=180.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--zipf-s", type=float, default=1.1)
    p.add_argument("--replica-cpus", type=float, default=0.5)
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--cpus", type=int, default=None)
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    p.add_argument("--workdir", default=None, help="keeps the registry between runs (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args()

    import ray
    import requests
    from ray import serve

    from mmray.registry.config import RegistryConfig, resolve_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serve-scale-"))
    load_before = _load()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    curve = []
    try:
        print(f"registering {args.models} signature models in {workdir} ...", flush=True)
        info = setup(workdir, n_models=args.models, patients=args.patients, seed=args.seed)
        print(f"registered {info['registered']} (fan-out {info['fanout_register_s']} s)", flush=True)
        port = args.port or bs._free_port()
        tracking_uri, _ = resolve_tracking(RegistryConfig(), store=info["store"])
        sizes = [int(v) for v in args.max_models.split(",")]
        url = deploy(info["store"], port=port, max_models=max(sizes), replica_cpus=args.replica_cpus)
        base_app = serve.deployment(serve.ingress(baseline_api)(BaselineLoadPerRequest)).options(
            name="Baseline", ray_actor_options={"num_cpus": args.replica_cpus}, max_ongoing_requests=64)
        serve.run(base_app.bind(tracking_uri), name="baseline", route_prefix="/baseline", blocking=False,
                  logging_config={"enable_access_log": False})
        models = requests.get(f"{url}/v1/models", timeout=300).json()["models"]
        models.sort(key=lambda m: m["name"])
        row = info["expression"].iloc[0]
        bodies = [json.dumps({"instances": [{f: float(row[f]) for f in m["features"]}]}).encode() for m in models]
        every = [(m["name"], b) for m, b in zip(models, bodies)]
        print(f"every model once ({len(every)}) ...", flush=True)
        every_res = run_mmray(url, every, concurrency=args.concurrency, max_seconds=10 * args.max_seconds)
        all_models = {**every_res, "models_listed": len(models)}
        print(f"all models: {every_res['requests']} requests, {every_res['errors']} errors, p50 "
              f"{every_res['p50_ms']:.1f} ms", flush=True)
        seq = bs.zipf_sequence(len(models), max(args.requests, args.baseline_requests), s=args.zipf_s, seed=args.seed)
        work = [every[k] for k in seq]
        for m in sizes:
            url = deploy(info["store"], port=port, max_models=m, replica_cpus=args.replica_cpus)  # a fresh replica
            for side in (f"{url}/v1/predict", f"{url}/baseline/v1/predict"):  # both answer before timing starts
                r = requests.post(side, data=work[0][1], headers={"serve_multiplexed_model_id": work[0][0]},
                                  timeout=300)
                if r.status_code != 200:
                    raise SystemExit(f"{side} answered {r.status_code}: {r.text[:2000]}")
            base = bs.drive(f"{url}/baseline/v1/predict", work[:args.baseline_requests], concurrency=args.concurrency,
                            max_seconds=args.max_seconds)
            cold = run_mmray(url, work[:args.requests], concurrency=args.concurrency, max_seconds=args.max_seconds)
            steady = run_mmray(url, work[:args.requests], concurrency=args.concurrency, max_seconds=args.max_seconds)
            point = {"max_models": m, "baseline": base, "cold": cold, "steady": steady,
                     "ratio": round(base["p50_ms"] / steady["p50_ms"], 2), "loadavg": _load()}
            curve.append(point)
            print(f"M={m}: steady p50 {steady['p50_ms']:.1f} ms p99 {steady['p99_ms']:.1f} ms hit "
                  f"{steady['cache_hit_rate']} (cold {cold['cache_hit_rate']}), errors {steady['errors']}+"
                  f"{cold['errors']}; baseline p50 {base['p50_ms']:.1f} ms -> {point['ratio']}x", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    last = curve[-1]
    errors = all_models["errors"] + sum(c[k]["errors"] for c in curve for k in ("baseline", "cold", "steady"))
    result = {"baseline": last["baseline"], "mmray": last["steady"], "ratio": last["ratio"],
              "ratio_metric": "baseline p50 / mmray steady p50 at the largest max_models_per_replica",
              "ratio_by_max_models": {c["max_models"]: c["ratio"] for c in curve}, "errors_total": errors,
              "all_models": all_models, "curve": curve,
              "setup": {k: v for k, v in info.items() if k != "expression"},
              "config": {k: v for k, v in vars(args).items() if k not in ("json", "png")},
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": _load()}}
    Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.png:
        plot(result, args.png)
    print(f"{len(models)} models, {errors} errors in total; ratio by max_models {result['ratio_by_max_models']}; "
          f"wrote {args.json}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
