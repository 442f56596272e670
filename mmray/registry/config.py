"""Registry settings: where MLflow lives, the registration gate, the serving alias.

Where the registry is (first that applies):

1. ``tracking_uri`` in the config (``registry.tracking_uri=http://head:5000``);
2. the ``MLFLOW_TRACKING_URI`` environment variable (what the cluster setup exports);
3. a local sqlite database and artifact folder in a work directory:
   ``sqlite:///<workdir>/mlflow.db`` and ``<workdir>/mlartifacts``. ``workdir``
   is ``registry.workdir`` when given, else ``<store>/_mlflow`` for a local
   feature store (``_mlflow`` is not a valid group name, so the store never
   lists it), else ``./mmray_work``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mmray import uri as uri_mod

DEFAULT_WORKDIR = "mmray_work"
STORE_SUBDIR = "_mlflow"


@dataclass(frozen=True)
class GateConfig:
    """Registration gate: a model is registered only when its cross-validated metric passes.

    ``metric`` names one of the metrics the trainer logs (``harrell_c_mean``,
    ``uno_c_mean``, ``harrell_c_oof``, ...); it must be ``>= threshold`` (or
    ``<=`` when ``higher_is_better`` is false, e.g. an integrated Brier score).
    ``require_ci_low``, when set, also requires the lower bootstrap bound
    ``ci_metric`` (default: pooled out-of-fold Harrell C) to be ``>=`` it.
    """

    metric: str = "harrell_c_mean"
    threshold: float = 0.55
    higher_is_better: bool = True
    require_ci_low: float | None = None
    ci_metric: str = "harrell_c_oof_low"


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow tracking + model registry (see the module docstring for the location rules).

    ``champion_policy``: ``best`` (default) moves the ``alias`` to a new version
    that passed the gate when the model has no champion yet, when the champion
    was trained on other data (other feature-group or folds versions: its
    metric is not comparable) or when the new gate metric is at least the
    champion's; ``latest`` moves it to every version that passed the gate.
    """

    tracking_uri: str | None = None
    workdir: str | None = None
    experiment: str = "mmray-signatures"
    alias: str = "champion"
    champion_policy: Literal["best", "latest"] = "best"
    gate: GateConfig = field(default_factory=GateConfig)

    def validate(self):
        if not self.alias or not self.alias.replace("_", "").replace("-", "").isalnum():
            yield ("alias", f"use letters, digits, '_' and '-', got {self.alias!r}")
        if self.alias.lower() == "latest" or (self.alias[:1] in "vV" and self.alias[1:].isdigit()):
            yield ("alias", f"{self.alias!r} is reserved by MLflow; use e.g. 'champion'")


def resolve_workdir(cfg: RegistryConfig, *, store: str | None = None) -> Path:
    """The local work directory of the sqlite registry (absolute)."""
    if cfg.workdir:
        return Path(cfg.workdir).expanduser().resolve()
    if store and not uri_mod.is_s3(str(store)):
        return (Path(store).expanduser() / STORE_SUBDIR).resolve()
    return Path(DEFAULT_WORKDIR).resolve()


def resolve_tracking(cfg: RegistryConfig, *, store: str | None = None) -> tuple[str, str | None]:
    """``(tracking URI, artifact location for new experiments or None)``.

    A server URI (config or ``MLFLOW_TRACKING_URI``) decides its own artifact
    store; the local default puts artifacts in ``<workdir>/mlartifacts``.
    """
    if cfg.tracking_uri:
        return cfg.tracking_uri, None
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env, None
    workdir = resolve_workdir(cfg, store=store)
    return f"sqlite:///{workdir}/mlflow.db", (workdir / "mlartifacts").as_uri()
