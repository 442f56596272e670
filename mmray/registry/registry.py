"""MLflow-backed registry: gated registration, lineage tags, champion alias, resume lookups.

One MLflow *run* per candidate model (experiment ``registry.experiment``)
holds its params, metrics (per fold and mean/sd), lineage tags and the
outcome::

    mmray.gate          passed | failed | skipped
    mmray.gate_reason   e.g. "harrell_c_mean 0.512 < 0.55"
    mmray.outcome       registered | gate_failed | skipped
    mmray.registered_model, mmray.model_version, mmray.champion (when registered)

Only a model that passes the gate is logged as a pyfunc model and becomes a
version of its registered model, tagged with the same lineage plus
``mmray.features`` and ``mmray.metrics`` (JSON). The alias (``champion``)
moves by :attr:`RegistryConfig.champion_policy`; serving loads
``models:/<name>@champion``. A candidate that raised is logged with status
FAILED and ``mmray.error``, so a resumed job retries it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from mmray.errors import RegistryError
from mmray.registry.config import RegistryConfig, resolve_tracking
from mmray.registry.gate import GateResult, check_gate
from mmray.registry.lineage import TAG, Lineage
from mmray.registry.pyfunc import SurvivalPyfunc, log_pyfunc

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A trained (or skipped, or failed) model on its way to the registry."""

    name: str  # registered model name
    lineage: Lineage
    status: Literal["fitted", "skipped", "error"]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    model: SurvivalPyfunc | None = None
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """What happened to a candidate (or, when resumed, to its earlier run)."""

    name: str
    signature: str
    outcome: str  # registered | gate_failed | skipped | error
    reason: str
    run_id: str | None = None
    version: str | None = None
    champion: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    resumed: bool = False


@dataclass(frozen=True)
class ServableModel:
    name: str
    version: str
    features: list[str]
    metrics: dict[str, float]
    signature: str | None
    run_id: str | None


class Registry:
    """MLflow tracking + model registry at the location :func:`resolve_tracking` picks."""

    def __init__(self, cfg: RegistryConfig, *, store: str | None = None):
        from mlflow import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.cfg = cfg
        self.tracking_uri, self._artifact_root = resolve_tracking(cfg, store=store)
        if self.tracking_uri.startswith("sqlite:///"):
            from pathlib import Path

            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r}, experiment={self.cfg.experiment!r})"

    def activate(self) -> None:
        """Point this process's MLflow globals here (``models:/`` URIs resolve against it)."""
        import mlflow

        # mlflow's setters also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which
        # resolve_tracking reads as the user's choice: keep the environment as the user left it,
        # or every later stage in this process would log into this registry.
        before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    # ------------------------------------------------------------------ runs
    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            if exp is not None:
                return exp.experiment_id
            return self.client.create_experiment(self.cfg.experiment, artifact_location=self._artifact_root)
        except MlflowException as e:
            exp = self.client.get_experiment_by_name(self.cfg.experiment)  # another process made it first
            if exp is not None:
                return exp.experiment_id
            raise RegistryError(f"cannot open MLflow experiment {self.cfg.experiment!r} at {self.tracking_uri}: "
                                f"{e}; check registry.tracking_uri / MLFLOW_TRACKING_URI") from e

    def finished_runs(self, *, config_hash: str, data_key: str) -> dict[str, Any]:
        """Signature -> newest FINISHED run with this config hash and data key (for resume)."""
        flt = (f"tags.`{TAG}config_hash` = '{config_hash}' and tags.`{TAG}data_key` = '{data_key}' "
               f"and attributes.status = 'FINISHED'")
        out: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1000,
                                           order_by=["attributes.start_time DESC"], page_token=token)
            for run in page:
                sig = run.data.tags.get(TAG + "signature")
                if sig is not None and sig not in out:
                    out[sig] = run
            token = page.token
            if not token:
                return out

    def close_abandoned(self, match: str) -> int:
        """Mark KILLED the RUNNING runs of this experiment that ``match`` selects (:mod:`.abandoned`)."""
        from mmray.registry.abandoned import close_abandoned

        return close_abandoned(self.client, [self.experiment_id], match=match)

    @staticmethod
    def outcome_of_run(run) -> Outcome:
        """The :class:`Outcome` an earlier run recorded (for resumed signatures)."""
        tags = run.data.tags
        return Outcome(name=tags.get(TAG + "registered_model", run.info.run_name or ""),
                       signature=tags.get(TAG + "signature", ""),
                       outcome=tags.get(TAG + "outcome", "unknown"), reason=tags.get(TAG + "gate_reason", ""),
                       run_id=run.info.run_id, version=tags.get(TAG + "model_version"),
                       champion=tags.get(TAG + "champion") == "true", metrics=dict(run.data.metrics),
                       resumed=True)

    # ------------------------------------------------------------------ record
    def record(self, cand: Candidate) -> Outcome:
        """Log ``cand`` as a run; register it when it was fitted and passes the gate."""
        from mlflow.entities import Metric, Param

        from mmray.environments import check_registry_write

        check_registry_write(self.tracking_uri)  # a dev run never logs into prod's registry

        tags = {**cand.lineage.run_tags(), TAG + "registered_model": cand.name}
        run = self.client.create_run(self.experiment_id, run_name=cand.name,
                                     tags={k: v for k, v in tags.items()})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = {k: float(v) for k, v in cand.metrics.items() if v is not None and math.isfinite(float(v))}
        params = [Param(k, str(v)[:6000]) for k, v in sorted(cand.params.items())]
        mlist = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
        for i in range(0, max(len(params), len(mlist)), 100):
            self.client.log_batch(run_id, metrics=mlist[i:i + 100], params=params[i:i + 100])
        if cand.status == "error":
            self._set_tags(run_id, {"gate": "error", "outcome": "error", "error": cand.reason[:7000],
                                    "gate_reason": cand.reason[:7000]})
            self.client.set_terminated(run_id, status="FAILED")
            return Outcome(cand.name, cand.lineage.signature, "error", cand.reason, run_id, metrics=metrics)
        if cand.status == "skipped":
            self._set_tags(run_id, {"gate": "skipped", "outcome": "skipped", "gate_reason": cand.reason[:7000]})
            self.client.set_terminated(run_id)
            return Outcome(cand.name, cand.lineage.signature, "skipped", cand.reason, run_id, metrics=metrics)
        gate = check_gate(metrics, self.cfg.gate)
        if not gate.passed:
            self._set_tags(run_id, {"gate": "failed", "outcome": "gate_failed", "gate_reason": gate.reason})
            self.client.set_terminated(run_id)
            return Outcome(cand.name, cand.lineage.signature, "gate_failed", gate.reason, run_id, metrics=metrics)
        if cand.model is None:
            raise RegistryError(f"candidate {cand.name!r} passed the gate but carries no model to register")
        try:
            version, champion, decision = self._register(cand, run_id=run_id, gate=gate, metrics=metrics)
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self._set_tags(run_id, {"gate": "passed", "outcome": "registered", "gate_reason": gate.reason,
                                "model_version": version, "champion": "true" if champion else "false",
                                "champion_decision": decision})
        self.client.set_terminated(run_id)
        return Outcome(cand.name, cand.lineage.signature, "registered", gate.reason, run_id, version,
                       champion, metrics)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(TAG + k, str(v)) for k, v in tags.items()])

    def _register(self, cand: Candidate, *, run_id: str, gate: GateResult,
                  metrics: dict[str, float]) -> tuple[str, bool, str]:
        from mlflow.exceptions import MlflowException

        source = log_pyfunc(self.client, run_id, cand.model)
        try:
            self.client.create_registered_model(cand.name, tags=cand.lineage.model_tags(),
                                                description=cand.lineage.model_description())
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise RegistryError(f"cannot create registered model {cand.name!r}: {e}") from e
        tags = cand.lineage.version_tags(features=cand.model.features, metrics=metrics)
        tags[TAG + "gate"] = "passed"
        tags[TAG + "gate_reason"] = gate.reason
        try:
            mv = self.client.create_model_version(cand.name, source, run_id=run_id, tags=tags,
                                                  description=gate.reason)
        except MlflowException as e:
            raise RegistryError(f"cannot register a version of {cand.name!r} from run {run_id}: {e}") from e
        champion, decision = self._champion_decision(cand.name, lineage=cand.lineage, value=gate.value)
        if champion:
            self.client.set_registered_model_alias(cand.name, self.cfg.alias, mv.version)
        self.client.set_model_version_tag(cand.name, mv.version, TAG + "champion_decision", decision)
        return str(mv.version), champion, decision

    def _champion_decision(self, name: str, *, lineage: Lineage, value: float | None) -> tuple[bool, str]:
        """Whether a new passing version takes the alias (see RegistryConfig.champion_policy)."""
        current = self.champion(name)
        alias = self.cfg.alias
        if current is None:
            return True, f"first version to pass the gate: becomes {alias}"
        if self.cfg.champion_policy == "latest":
            return True, f"policy 'latest': replaces v{current.version} as {alias}"
        if current.tags.get(TAG + "data_key") != lineage.data_key:
            return True, (f"replaces v{current.version} as {alias}: that one was trained on other data "
                          f"(feature/folds versions differ, metrics not comparable)")
        try:
            old = json.loads(current.tags.get(TAG + "metrics", "{}")).get(self.cfg.gate.metric)
        except ValueError:
            old = None
        metric = self.cfg.gate.metric
        if old is None or value is None:
            return True, f"replaces v{current.version} as {alias}: its {metric} is unknown"
        tol = 1e-9  # an identical rerun (same data, same config) ties and takes the alias
        better = value >= old - tol if self.cfg.gate.higher_is_better else value <= old + tol
        if better:
            return True, f"beats or equals v{current.version}: {metric} {value:.3f} vs {old:.3f}"
        return False, f"v{current.version} stays {alias}: {metric} {old:.3f} vs this version's {value:.3f}"

    # ------------------------------------------------------------------ lookups
    def champion(self, name: str):
        """The model version holding the alias, or ``None`` (unknown model or no alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, self.cfg.alias)
        except MlflowException as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
                return None
            raise RegistryError(f"cannot look up {name}@{self.cfg.alias} at {self.tracking_uri}: {e}") from e

    def servable(self, *, prefix: str = "") -> list[ServableModel]:
        """Registered models (names starting with ``prefix``) that hold the alias."""
        flt = f"name LIKE '{prefix.replace(chr(39), '')}%'" if prefix else None
        found, token = [], None
        while True:
            page = self.client.search_registered_models(filter_string=flt, max_results=1000, page_token=token)
            found += [rm for rm in page if self.cfg.alias in (rm.aliases or {})]
            token = page.token
            if not token:
                break
        return [self.describe(rm.name, str(rm.aliases[self.cfg.alias])) for rm in sorted(found, key=lambda r: r.name)]

    def describe(self, name: str, version: str) -> ServableModel:
        mv = self.client.get_model_version(name, version)
        tags = mv.tags or {}
        try:
            features = json.loads(tags.get(TAG + "features", "[]"))
            metrics = json.loads(tags.get(TAG + "metrics", "{}"))
        except ValueError:
            features, metrics = [], {}
        return ServableModel(name=name, version=str(mv.version), features=features, metrics=metrics,
                             signature=tags.get(TAG + "signature"), run_id=mv.run_id)
