"""Serving settings (``ray_jobs/configs/serve.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmray.errors import ConfigError
from mmray.registry.config import RegistryConfig
from mmray.serve import auth

MIB = 1024 * 1024


@dataclass(frozen=True)
class AutoscalingConfig:
    """Ray Serve autoscaling of the model deployment (replaces ``num_replicas`` when set)."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 4.0

    def validate(self):
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            yield ("", (f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                        f"{self.min_replicas}..{self.max_replicas}"))
        if self.target_ongoing_requests <= 0:
            yield ("target_ongoing_requests", f"must be > 0, got {self.target_ongoing_requests}")


@dataclass(frozen=True)
class ServeConfig:
    """``mmray serve``: one Ray Serve application hosting every registered ``alias`` model.

    ``model_prefix``: only registered models whose name starts with it are
    servable (``sig__``: the signature models; empty: all). ``token`` (or the
    file ``token_file``, or the environment variable named by ``token_env``,
    read where ``mmray serve`` runs) turns on bearer-token auth for every
    route but ``/healthz``; a host that is not a loopback address needs one
    unless ``allow_unauthenticated`` (see :mod:`mmray.serve.auth`).
    ``max_request_bytes``: larger request bodies get 413 before they are parsed.
    ``alias_refresh_s``: how long a replica trusts its name -> version
    resolution before asking the registry again (a new champion is served
    within this time). ``block``: keep the command running (default: only
    when it started a local Ray, since Serve on a cluster outlives the command).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "mmray"
    route_prefix: str = "/"
    store: str | None = None  # a local store locates the default registry (<store>/_mlflow)
    model_prefix: str = ""
    max_models_per_replica: int = 64
    num_replicas: int = 1
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = 64
    replica_num_cpus: float = 1.0
    token: str | None = field(default=None, repr=False)  # prefer token_file or token_env: never in a repr
    token_file: str | None = None
    token_env: str = "MMRAY_SERVE_TOKEN"
    allow_unauthenticated: bool = False  # serve a non-loopback host without a token, on purpose
    # 8 MiB: ~13 whole-transcriptome profiles by name (~630 KB each), ~2,000 patients of a 200-gene
    # signature as rows. json.loads of 8 MiB: 0.5-0.9 s on 2 busy cores (load average ~15).
    max_request_bytes: int = 8 * MIB
    alias_refresh_s: float = 30.0
    models_list_cache_s: float = 10.0
    max_instances_per_request: int = 10000
    block: bool | None = None
    access_log: bool = True  # Serve's per-request access log (route, status, latency; never bodies)
    # Ray Serve's throughput-optimised data plane (see SERVE_THROUGHPUT_ENV): about 1.5x lower latency.
    throughput_optimized: bool = True
    # Environment of the replica processes (e.g. AWS_* for an S3 artifact store); wins over the above.
    replica_env: dict[str, str] = field(default_factory=dict)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def validate(self):
        if not 0 < self.port < 65536:
            yield ("port", f"must be 1..65535, got {self.port}")
        if self.max_models_per_replica < 1:
            yield ("max_models_per_replica", f"must be >= 1, got {self.max_models_per_replica}")
        if self.num_replicas < 1:
            yield ("num_replicas", f"must be >= 1, got {self.num_replicas}")
        if self.max_ongoing_requests < 1:
            yield ("max_ongoing_requests", f"must be >= 1, got {self.max_ongoing_requests}")
        if self.replica_num_cpus < 0:
            yield ("replica_num_cpus", f"must be >= 0, got {self.replica_num_cpus}")
        if not self.route_prefix.startswith("/"):
            yield ("route_prefix", f"must start with '/', got {self.route_prefix!r}")
        if self.max_instances_per_request < 1:
            yield ("max_instances_per_request", f"must be >= 1, got {self.max_instances_per_request}")
        if self.max_request_bytes < 1024:
            yield ("max_request_bytes", f"must be >= 1024, got {self.max_request_bytes}")


# Ray Serve reads these when its controller, proxies and replicas start (Ray >= 2.55 documents
# RAY_SERVE_THROUGHPUT_OPTIMIZED): gRPC between replicas, the router and user code on the process's
# main event loop, request-path logs buffered and not copied to stderr, GC frozen after start-up.
# RAY_SERVE_PROXY_USE_GRPC: the HTTP proxy talks gRPC to the replicas too (the optimised mode
# alone leaves the proxy on Ray actor calls). Direct ingress stays off: requests keep going
# through the proxy, which routes a serve_multiplexed_model_id to a replica holding that model.
SERVE_THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_PROXY_USE_GRPC": "1",
                        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}


def serve_process_env(cfg: ServeConfig) -> dict[str, str]:
    """Environment for Serve's controller and proxies (controller_options) when throughput-optimised."""
    return dict(SERVE_THROUGHPUT_ENV) if cfg.throughput_optimized else {}


def replica_process_env(cfg: ServeConfig) -> dict[str, str]:
    """Environment of the model replicas: the Serve flags, then the user's ``replica_env``."""
    return {**serve_process_env(cfg), **cfg.replica_env}


def serving_token(cfg: ServeConfig) -> str | None:
    """The token (``token``, then ``token_file``, then ``$token_env``); None: no auth."""
    return auth.read_token(token=cfg.token, token_file=cfg.token_file, token_env=cfg.token_env)


def token_digest(cfg: ServeConfig) -> str | None:
    """SHA-256 of the configured token; None: no auth.

    Replicas get only the digest, so the token itself is never part of a
    deployment's arguments.
    """
    return auth.digest(serving_token(cfg))


def bind_problems(cfg: ServeConfig) -> list[tuple[str, str]]:
    """``[(key, message)]``: an unreadable ``token_file``, or a non-loopback host with no token.

    Not part of :meth:`ServeConfig.validate`: it reads the environment and the
    token file of the machine that serves, so it runs where and when serving
    starts (and in the pipeline's checks when its stages include serve).
    """
    try:
        has_token = serving_token(cfg) is not None
    except ConfigError as e:
        return list(e.problems)
    problem = auth.bind_problem(host=cfg.host, has_token=has_token, allow_unauthenticated=cfg.allow_unauthenticated)
    return [("host", problem)] if problem else []


def check_bind(cfg: ServeConfig) -> None:
    """Raise :class:`ConfigError` naming the host and the fixes when ``cfg`` may not be served."""
    problems = bind_problems(cfg)
    if problems:
        raise ConfigError(problems)
