"""Named environments (dev, prod, ...): each its own store, MLflow tracking/registry and serve settings.

One YAML file (``--environments PATH``, else ``$MMRAY_ENVIRONMENTS``, else
``./environments.yaml``) lists them::

    environments:
      dev:
        store: /data/dev_store
        tracking_uri: sqlite:////data/dev_mlflow/mlflow.db   # default: <store>/_mlflow
        serve: {host: 127.0.0.1, port: 8000}
      prod:
        store: s3://prod-store/luad
        tracking_uri: http://mlflow-prod:5000
        registry_uri: http://mlflow-prod:5000               # default: tracking_uri
        protected: true
        serve: {port: 8100}
        promotion: {labels_group: labels, gate: {metric: harrell_c, threshold: 0.6}, min_patients: 20}

Activating an environment (``mmray <command> --env dev``) exports
``MMRAY_ENV`` / ``MMRAY_ENVIRONMENTS`` and the environment's MLflow URIs
into this process (Ray workers started from it inherit them). From then on
every store write (:func:`check_store_write`, called where a store reserves
a version or writes a file) and every registry write
(:func:`check_registry_write`) is refused when its target belongs to another
environment: a dev run cannot touch prod. Promotion (``mmray promote``) is
the one path between environments; it writes the target as the target
(:func:`writing_as`), after the target's gate passed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmray import uri as uri_mod
from mmray.errors import ConfigError, EnvironmentWriteError

ENV_VAR = "MMRAY_ENV"
FILE_VAR = "MMRAY_ENVIRONMENTS"
DEFAULT_FILE = "environments.yaml"


@dataclass(frozen=True)
class Environment:
    """One environment of the YAML (module doc)."""

    name: str
    store: str
    tracking_uri: str | None = None
    registry_uri: str | None = None
    protected: bool = False
    serve: dict = field(default_factory=dict)
    promotion: dict = field(default_factory=dict)

    def mlflow_uris(self) -> tuple[str, str]:
        """``(tracking, registry)`` URI: as given, else the store's local sqlite registry."""
        from mmray.registry.config import RegistryConfig, resolve_tracking

        tracking = self.tracking_uri
        if not tracking:
            saved = os.environ.pop("MLFLOW_TRACKING_URI", None)  # the store default, not an exported one
            try:
                tracking, _ = resolve_tracking(RegistryConfig(), store=self.store)
            finally:
                if saved is not None:
                    os.environ["MLFLOW_TRACKING_URI"] = saved
        return tracking, self.registry_uri or tracking


_KEYS = {"store", "tracking_uri", "registry_uri", "protected", "serve", "promotion"}


def load_environments(path: str | os.PathLike | None = None) -> dict[str, Environment]:
    """Parse the environments YAML; every problem is reported at once, naming the file and field."""
    path = str(path or os.environ.get(FILE_VAR) or DEFAULT_FILE)
    if not uri_mod.exists(path):
        raise ConfigError(f"environments file {path} not found; pass --environments PATH or set "
                          f"{FILE_VAR} (see docs/environments.md)")
    try:
        doc = yaml.safe_load(uri_mod.read_bytes(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    envs = doc.get("environments") if isinstance(doc, dict) else None
    if not isinstance(envs, dict) or not envs:
        raise ConfigError(f"{path}: expected a top-level mapping 'environments: {{dev: {{store: ...}}, ...}}'")
    problems, out = [], {}
    for name, spec in envs.items():
        if not isinstance(spec, dict):
            problems.append(f"environments.{name}: expected a mapping with at least 'store'")
            continue
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            problems.append(f"environments.{name}: unknown key(s) {unknown}; valid: {sorted(_KEYS)}")
        if not spec.get("store"):
            problems.append(f"environments.{name}.store: required (a folder or s3://bucket/prefix)")
            continue
        for key in ("serve", "promotion"):
            if not isinstance(spec.get(key) or {}, dict):
                problems.append(f"environments.{name}.{key}: expected a mapping")
        store = str(spec["store"])
        if not uri_mod.is_s3(store):  # relative to the YAML's folder, like cohort paths
            store = str((Path(path).parent / store).resolve()) if not Path(store).is_absolute() else store
        out[str(name)] = Environment(name=str(name), store=store, tracking_uri=spec.get("tracking_uri"),
                                     registry_uri=spec.get("registry_uri"), protected=bool(spec.get("protected")),
                                     serve=dict(spec.get("serve") or {}), promotion=dict(spec.get("promotion") or {}))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    stores = {}
    for env in out.values():
        if _norm(env.store) in stores:
            raise ConfigError(f"{path}: environments {stores[_norm(env.store)]!r} and {env.name!r} share the store "
                              f"{env.store}; each environment needs its own")
        stores[_norm(env.store)] = env.name
    return out


def get_environment(name: str, path: str | os.PathLike | None = None) -> Environment:
    envs = load_environments(path)
    if name not in envs:
        raise ConfigError(f"unknown environment {name!r}; the environments file defines {sorted(envs)}")
    return envs[name]


def activate(env: Environment, *, path: str | os.PathLike | None = None) -> None:
    """Make ``env`` this process's environment (module doc): guards on, MLflow pointed at it."""
    tracking, registry = env.mlflow_uris()
    os.environ[ENV_VAR] = env.name
    os.environ[FILE_VAR] = str(Path(path or os.environ.get(FILE_VAR) or DEFAULT_FILE).resolve()) \
        if not uri_mod.is_s3(str(path or "")) else str(path)
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    os.environ["MLFLOW_REGISTRY_URI"] = registry


def active() -> tuple[str | None, dict[str, Environment]]:
    """``(active environment name or None, all environments)`` from this process's variables."""
    name = os.environ.get(ENV_VAR)
    if not name:
        return None, {}
    path = os.environ.get(FILE_VAR) or DEFAULT_FILE
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None
    if _CACHE.get("key") != (path, stamp):  # writes check often: parse the file once per change
        _CACHE.update(key=(path, stamp), envs=load_environments(path))
    return name, _CACHE["envs"]


_CACHE: dict = {}


@contextlib.contextmanager
def writing_as(env: Environment):
    """Within the block, writes are checked as if ``env`` were active (promotion writes its target)."""
    saved = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = env.name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved


def _norm(location: str) -> str:
    location = str(location).rstrip("/")
    if uri_mod.is_s3(location):
        return location
    if location.startswith("file://"):
        location = location[len("file://"):]
    return str(Path(location).expanduser().resolve())


def _within(target: str, root: str) -> bool:
    return target == root or target.startswith(root + "/")


def owner_of_store(location: str, envs: dict[str, Environment]) -> str | None:
    """The environment whose store holds ``location`` (the most specific one), or None."""
    target = _norm(location)
    hits = [(len(_norm(e.store)), e.name) for e in envs.values() if _within(target, _norm(e.store))]
    return max(hits)[1] if hits else None


def check_store_write(location: str) -> None:
    """Refuse a write to ``location`` (a store path or URI) that belongs to another environment."""
    name, envs = active()
    if not name:
        return
    owner = owner_of_store(location, envs)
    if owner is not None and owner != name:
        raise EnvironmentWriteError(
            f"environment {name!r} cannot write to {location}: it is in the store of environment {owner!r}. "
            f"Runs write only to their own environment's store; models reach {owner!r} through "
            f"`mmray promote MODEL --from {name} --to {owner}`")


def _registry_key(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + _norm(uri[len("sqlite:///"):])
    return uri.rstrip("/")


def check_registry_write(tracking_uri: str) -> None:
    """Refuse registering/logging into another environment's MLflow tracking or registry server."""
    name, envs = active()
    if not name:
        return
    key = _registry_key(tracking_uri)
    for env in envs.values():
        if env.name != name and key in {_registry_key(u) for u in env.mlflow_uris()}:
            raise EnvironmentWriteError(
                f"environment {name!r} cannot write to the MLflow registry {tracking_uri} of environment "
                f"{env.name!r}; use `mmray promote MODEL --from {name} --to {env.name}`")


def store_location(fs, path: str) -> str:
    """A pyarrow filesystem path as the location string environments use (local path or s3://)."""
    import pyarrow.fs as pafs

    return path if isinstance(fs, pafs.LocalFileSystem) else f"s3://{path.lstrip('/')}"
