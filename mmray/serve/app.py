"""The Ray Serve application: FastAPI ingress + multiplexed registered models.

Routes (see :mod:`mmray.serve.schemas` for the bodies)::

    POST /v1/predict   risk scores (+ survival curves) from one registered model
    POST /v1/explain/{model}  the same body: risk, curve, modality and feature contributions per instance
    POST /v1/fhir/{model}     a FHIR R4 Bundle (Patient + Observations) -> a RiskAssessment (mmray.serve.fhir)
    GET  /v1/models    servable models: name, version, features, metrics
    GET  /v1/stats     this replica's counters: requests, model loads (local_reloads: evicted models
                       unpickled from the replica's copy) and the time they took, hit rate, loaded models
    GET  /healthz      liveness (never needs the token)

One deployment, ``MmrayModels``, is the ingress and holds the models: its
``get_model`` is ``@serve.multiplexed(max_num_models_per_replica=N)``, so each
replica keeps at most N models, evicts the least recently used, and Serve
routes a request carrying the ``serve_multiplexed_model_id`` header to a
replica that already holds that model. A request naming the model only in
the body is served by whichever replica gets it (loading the model there).
Logs carry model names, versions, counts and latencies, never inputs.
"""


import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
import traceback

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mmray import logs
from mmray.errors import RegistryError
from mmray.serve.config import ServeConfig, check_bind, replica_process_env, serve_process_env, token_digest

log = logging.getLogger("mmray.serve")
DEPLOYMENT = "MmrayModels"


def _json(status: int, body: dict, headers: dict | None = None):
    return JSONResponse(status_code=status, content=body, headers=headers)


def _where(e: BaseException) -> str:
    """Where an unexpected error was raised (file:line of the last frames), without its message,
    which may quote request values."""
    frames = traceback.extract_tb(e.__traceback__)[-3:]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))


def build_app(cfg: ServeConfig, *, tracking_uri: str):
    """The bound Serve application (pass it to ``serve.run``)."""
    from ray import serve

    from mmray.serve.limits import read_body
    from mmray.serve.models import Catalog
    from mmray.serve.schemas import MODEL_HEADER, ApiError, model_id, parse_body, parse_inputs, prediction_body

    api = FastAPI(title="mmray", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    max_models = cfg.max_models_per_replica  # the class below must not capture cfg (it may hold the token)

    @serve.ingress(api)
    class MmrayModels:
        def __init__(self, *, tracking_uri: str, alias: str, prefix: str, token_sha256: str | None,
                     alias_refresh_s: float, list_cache_s: float, max_instances: int, max_models: int,
                     max_request_bytes: int):
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            self.catalog = Catalog(tracking_uri=tracking_uri, alias=alias, prefix=prefix,
                                   alias_refresh_s=alias_refresh_s, list_cache_s=list_cache_s)
            self.token_sha256 = token_sha256
            self.max_instances, self.max_models = max_instances, max_models
            self.max_request_bytes = max_request_bytes
            self.requests = 0
            self.loads = 0
            self.local_reloads = 0
            self.load_ms = {"registry": 0.0, "local": 0.0}  # time spent loading, by source
            self.load_counts: dict[str, int] = {}
            self.slots: dict = {}
            self._swap_lock = asyncio.Lock()
            ctx = serve.get_replica_context()
            self.replica = getattr(ctx, "replica_tag", None) or str(getattr(ctx, "replica_id", "replica"))

        # ------------------------------------------------------------ models
        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_model(self, name: str):
            version = await asyncio.to_thread(self.catalog.resolve, name)
            if version is None:
                raise ApiError(404, "unknown_model", f"no servable model {name!r} (registered, with alias "
                                                     f"'{self.catalog.alias}'); GET /v1/models lists them")
            slot = await asyncio.to_thread(self.catalog.load, name, version)
            self._count_load(name, local=slot.local_reload, ms=slot.load_ms)
            self.slots[name] = slot
            return slot

        def _count_load(self, name: str, *, local: bool = False, ms: float = 0.0) -> None:
            self.loads += 1
            self.local_reloads += int(local)
            self.load_ms["local" if local else "registry"] += ms
            self.load_counts[name] = self.load_counts.get(name, 0) + 1

        async def _model(self, name: str):
            # Resolve name@alias first (cached; refreshed every alias_refresh_s), so an unknown
            # name is a 404 before the cache evicts another model to make room for it.
            hit = self.catalog.cached_version(name)
            current = hit.version if hit is not None else await asyncio.to_thread(self.catalog.resolve, name)
            if current is None:
                raise ApiError(404, "unknown_model", f"no servable model {name!r}; GET /v1/models lists them")
            slot = await self.get_model(name)
            if current != slot.version:  # a new champion: swap it in place
                async with self._swap_lock:
                    if current != slot.version:
                        fresh = await asyncio.to_thread(self.catalog.load, name, current)
                        slot.version, slot.model = fresh.version, fresh.model
                        self._count_load(name, local=fresh.local_reload, ms=fresh.load_ms)
            return slot

        def _auth(self, request: Request) -> None:
            if self.token_sha256 is None:
                return
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            given = hashlib.sha256(token.strip().encode()).hexdigest()
            if scheme.lower() != "bearer" or not token or not hmac.compare_digest(given, self.token_sha256):
                raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>' with the serving token")

        # ------------------------------------------------------------ routes
        @api.post("/v1/predict")
        async def predict(self, request: Request):
            start = time.perf_counter()
            name = None
            try:
                self._auth(request)
                body = parse_body(await read_body(request, max_bytes=self.max_request_bytes))
                name = model_id(request.headers.get(MODEL_HEADER) or serve.get_multiplexed_model_id(), body)
                slot = await self._model(name)
                self.requests += 1
                x = parse_inputs(body, slot.model.features, max_instances=self.max_instances)
                risk, surv = slot.model.predict_arrays(x)
                out = prediction_body(name=name, version=slot.version, risk=risk, survival=surv,
                                      times_days=slot.model.times_days)
            except ApiError as e:
                log.info("predict model=%s status=%d error=%s", name, e.status, e.error)
                headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                return _json(e.status, e.body(), headers)
            except RegistryError as e:  # the registry is unreachable or failing: the server's fault
                log.warning("predict model=%s status=503: %s", name, re.sub(r"://[^/@\s]+@", "://***@", str(e)))
                return _json(503, {"error": "registry_unavailable", "message": "the model registry did not "
                                   "answer; retry later"}, {"Retry-After": "5"})
            except Exception as e:  # noqa: BLE001  a bug: answer JSON, log where (not the message: it may quote inputs)
                log.error("predict model=%s status=500 %s at %s", name, type(e).__name__, _where(e))
                return _json(500, {"error": "internal_error", "message": f"{type(e).__name__}; see the replica log"})
            ms = (time.perf_counter() - start) * 1000
            log.debug("predict model=%s v%s n=%d %.1f ms", name, slot.version, out["n"], ms)
            # plain floats and lists: skip FastAPI's jsonable_encoder walk
            return JSONResponse(out, headers={"Server-Timing": f"app;dur={ms:.2f}"})

        async def _answer(self, route: str, request: Request, name: str, work, *, fhir: bool = False):
            """Run ``work(body, slot)`` for ``name`` with /v1/predict's error mapping (FHIR: OperationOutcome)."""
            from mmray.serve.fhir import operation_outcome

            start = time.perf_counter()
            try:
                self._auth(request)
                body = parse_body(await read_body(request, max_bytes=self.max_request_bytes))
                name = model_id(name, {})
                slot = await self._model(name)
                self.requests += 1
                out = await asyncio.to_thread(work, body, slot)
            except ApiError as e:
                log.info("%s model=%s status=%d error=%s", route, name, e.status, e.error)
                headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                return _json(e.status, operation_outcome(e) if fhir else e.body(), headers)
            except RegistryError as e:
                log.warning("%s model=%s status=503: %s", route, name, re.sub(r"://[^/@\s]+@", "://***@", str(e)))
                err = ApiError(503, "registry_unavailable", "the model registry did not answer; retry later")
                return _json(503, operation_outcome(err) if fhir else err.body(), {"Retry-After": "5"})
            except Exception as e:  # noqa: BLE001  a bug: answer JSON, log where (not the message)
                log.error("%s model=%s status=500 %s at %s", route, name, type(e).__name__, _where(e))
                err = ApiError(500, "internal_error", f"{type(e).__name__}; see the replica log")
                return _json(500, operation_outcome(err) if fhir else err.body())
            ms = (time.perf_counter() - start) * 1000
            log.debug("%s model=%s v%s %.1f ms", route, name, slot.version, ms)
            return JSONResponse(out, headers={"Server-Timing": f"app;dur={ms:.2f}"},
                                media_type="application/fhir+json" if fhir else None)

        @api.post("/v1/explain/{name}")
        async def explain(self, name: str, request: Request):
            from mmray.serve.explain_api import explain_body

            max_instances = self.max_instances
            return await self._answer("explain", request, name, lambda body, slot: explain_body(
                body, name=slot.name, version=slot.version, model=slot.model, max_instances=max_instances))

        @api.post("/v1/fhir/{name}")
        async def fhir(self, name: str, request: Request):
            from mmray.serve.explain_api import fhir_body

            return await self._answer("fhir", request, name, lambda body, slot: fhir_body(
                body, name=slot.name, version=slot.version, model=slot.model), fhir=True)

        @api.get("/v1/models")
        async def models(self, request: Request):
            try:
                self._auth(request)
            except ApiError as e:
                return _json(e.status, e.body(), {"WWW-Authenticate": "Bearer"})
            listing = await asyncio.to_thread(self.catalog.listing)
            return {"alias": self.catalog.alias, "count": len(listing), "models": listing}

        @api.get("/v1/stats")
        async def stats(self, request: Request):
            try:
                self._auth(request)
            except ApiError as e:
                return _json(e.status, e.body(), {"WWW-Authenticate": "Bearer"})
            loaded = sorted(n for n, s in self.slots.items() if not s.evicted)
            hit_rate = 1.0 - self.loads / self.requests if self.requests else None
            return {"replica": self.replica, "requests": self.requests, "loads": self.loads,
                    "local_reloads": self.local_reloads,
                    "load_ms_total": {k: round(v, 1) for k, v in self.load_ms.items()},
                    "cache_hit_rate": hit_rate, "load_counts": dict(self.load_counts),
                    "loaded_models": loaded, "max_models_per_replica": self.max_models}

        @api.get("/healthz")
        async def healthz(self):
            return {"status": "ok"}

    options = {"name": DEPLOYMENT, "max_ongoing_requests": cfg.max_ongoing_requests,
               "ray_actor_options": {"num_cpus": cfg.replica_num_cpus}}
    replica_env = replica_process_env(cfg)
    if replica_env:
        options["ray_actor_options"]["runtime_env"] = {"env_vars": replica_env}
    if cfg.autoscaling is not None:
        a = cfg.autoscaling
        options["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                         "target_ongoing_requests": a.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.num_replicas
    deployment = serve.deployment(MmrayModels).options(**options)
    return deployment.bind(tracking_uri=tracking_uri, alias=cfg.registry.alias, prefix=cfg.model_prefix,
                           token_sha256=token_digest(cfg), alias_refresh_s=cfg.alias_refresh_s,
                           list_cache_s=cfg.models_list_cache_s, max_instances=cfg.max_instances_per_request,
                           max_models=cfg.max_models_per_replica, max_request_bytes=cfg.max_request_bytes)


def start_serve(cfg: ServeConfig) -> str:
    """Deploy the application on the connected Ray cluster; returns its base URL."""
    from ray import serve

    from mmray.registry.config import resolve_tracking

    check_bind(cfg)  # a reachable host without a token: refused before anything starts
    tracking_uri, _ = resolve_tracking(cfg.registry, store=cfg.store)
    logging_config = {"enable_access_log": cfg.access_log}
    # The controller passes its environment on to the proxies it starts (an already running
    # Serve instance keeps the settings it started with).
    controller_env = serve_process_env(cfg)
    logs.quiet_ray_consoles()  # importing ray.serve installs its console handler: quiet it before "Started Serve"
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging_config,
                controller_options={"runtime_env": {"env_vars": controller_env}} if controller_env else None)
    logs.quiet_ray_consoles()  # serve.start installs ray.serve's console handler
    serve.run(build_app(cfg, tracking_uri=tracking_uri), name=cfg.app_name, route_prefix=cfg.route_prefix,
              blocking=False, logging_config=logging_config)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    log.info("serving registry %s at %s (auth %s)", tracking_uri.split("@")[-1], url,
             "on" if token_digest(cfg) else "off")
    return url


def run_serve(cfg: ServeConfig, *, local: bool) -> int:
    """``mmray serve``: deploy, print the URL, and (``cfg.block``, default: ``local``) wait for Ctrl-C."""
    from ray import serve

    url = start_serve(cfg)
    block = local if cfg.block is None else cfg.block
    print(f"mmray serve: application {cfg.app_name!r} at {url} (GET {url}/v1/models, POST {url}/v1/predict)",
          flush=True)
    if not block:
        print("mmray serve: deployed; it keeps running on the cluster (`serve shutdown` stops it)")
        return 0
    print("mmray serve: Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
