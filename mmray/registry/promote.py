"""``mmray promote MODEL[@VERSION] --from dev --to prod``: re-gate on the target's data, copy with lineage.

1. The source version (``@3`` a version, ``@alias`` an alias, nothing = the
   ``champion``) is read from the source environment's registry (read only).
2. Its pyfunc artifact is downloaded and evaluated on the *target*
   environment's own re-validation data: the target store's labels joined
   (point in time, latest versions) with the feature groups the model reads
   (``clinical__age`` -> group ``clinical``), optionally one fold of a folds
   group (``promotion.holdout_fold``). The target's gate
   (``promotion.gate``, default ``harrell_c >= 0.55``, metrics
   ``harrell_c``, ``n_patients``, ``n_events``) and ``promotion.min_patients``
   decide; a failure raises :class:`PromotionRefused` with the reason and
   writes nothing.
3. On a pass, the artifact is logged into a new run of the target's
   ``mmray-promotions`` experiment carrying the source run's params, metrics
   and tags (data versions, folds and their hash, code revision, config
   hashes) plus the source store's encoder identity and the promotion record
   (``mmray.promotion.*``: source environment, model, version, run, the
   holdout metrics, gate reason and the target data versions); it becomes a
   version of the same model name in the target registry, with the same tags,
   and takes the target alias (``promotion.alias``, default ``champion``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from mmray.environments import Environment, check_registry_write, writing_as
from mmray.errors import DataError, PromotionRefused, RegistryError, StoreError
from mmray.registry.config import GateConfig, RegistryConfig
from mmray.registry.gate import check_gate
from mmray.registry.lineage import TAG

log = logging.getLogger(__name__)
EXPERIMENT = "mmray-promotions"
DEFAULT_GATE = {"metric": "harrell_c", "threshold": 0.55}
P = TAG + "promotion."


@dataclass(frozen=True)
class Promotion:
    name: str
    source_version: str
    target_version: str
    alias: str
    metrics: dict[str, float]
    reason: str
    target_run_id: str
    tags: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        m = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.metrics.items())
        return (f"promoted {self.name} v{self.source_version} -> v{self.target_version} @{self.alias} "
                f"(gate: {self.reason}; {m}; run {self.target_run_id})")


def _client(env: Environment):
    from mlflow import MlflowClient

    tracking, registry = env.mlflow_uris()
    return MlflowClient(tracking_uri=tracking, registry_uri=registry)


def source_version(client, ref: str):
    """``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS`` -> the source model version."""
    from mlflow.exceptions import MlflowException

    name, _, which = ref.partition("@")
    which = which or "champion"
    try:
        if which.isdigit():
            return client.get_model_version(name, which)
        return client.get_model_version_by_alias(name, which)
    except MlflowException as e:
        raise RegistryError(f"no model version {name}@{which} in the source registry: {e}; "
                            f"`mlflow` / `mmray serve` list what is registered") from e


def groups_of(features: list[str]) -> list[str]:
    """Feature groups a model's input columns come from (``clinical__age``, ``has_expression``)."""
    groups = set()
    for f in features:
        if "__" in f:
            groups.add(f.split("__", 1)[0])
        elif f.startswith("has_"):
            groups.add(f[len("has_"):])
    return sorted(groups)


def holdout_table(env: Environment, features: list[str]):
    """The target environment's re-validation rows joined with the groups ``features`` need."""
    from mmray.store import FeatureStore
    from mmray.store.join import training_table

    cfg = env.promotion
    store = FeatureStore(env.store)
    labels_group = cfg.get("labels_group", "labels")
    try:
        labels = store.read_table(labels_group)
        if cfg.get("holdout_fold") is not None:
            folds = store.read_table(cfg.get("folds_group", "folds"))
            keep = set(folds.loc[folds["fold"] == int(cfg["holdout_fold"]), "patient_id"].astype(str))
            labels = labels[labels["patient_id"].astype(str).isin(keep)]
        table = training_table(store, labels, groups=groups_of(features))
    except (StoreError, FileNotFoundError, KeyError) as e:
        raise PromotionRefused(f"cannot build the re-validation data of environment {env.name!r} from "
                               f"{env.store}: {e}; the target store needs '{labels_group}' and the groups "
                               f"{groups_of(features)} the model reads") from e
    table = table[table["time_days"].notna() & table["event"].notna()]
    return table, dict(table.attrs.get("feature_versions", {})), labels_group


def evaluate(model, env: Environment) -> tuple[dict[str, float], dict[str, str]]:
    """The model's metrics on the target's re-validation data and the data versions used."""
    from mmray.train.metrics import harrell_c

    table, versions, labels_group = holdout_table(env, model.features)
    if table.empty:
        raise PromotionRefused(f"environment {env.name!r} has no labelled re-validation rows in {env.store}")
    missing = [f for f in model.features if f not in table.columns]
    if missing:
        raise PromotionRefused(f"the target store {env.store} lacks {len(missing)} input column(s) of the model "
                               f"(e.g. {missing[:5]}); ingest those groups into {env.name!r} first")
    try:
        risk = model.predict(None, table[model.features])["risk"].to_numpy(float)
    except (DataError, ValueError) as e:
        raise PromotionRefused(f"the model cannot predict on {env.name!r}'s data: {e}") from e
    event = table["event"].astype(bool).to_numpy()
    metrics = {"harrell_c": float(harrell_c(risk, time_days=table["time_days"].to_numpy(float), event=event)),
               "n_patients": float(table["patient_id"].nunique()), "n_events": float(event.sum())}
    versions = {labels_group: getattr(table, "attrs", {}).get("labels_version", "latest"), **versions}
    return metrics, versions


def encoder_identity(source: Environment, version_tags: dict[str, str]) -> dict[str, str]:
    """``{group:version: encoder params}`` of the source store's slide groups the model was trained on."""
    from mmray.store import FeatureStore

    try:
        versions = json.loads(version_tags.get(TAG + "feature_versions", "{}"))
    except ValueError:
        versions = {}
    out, store = {}, FeatureStore(source.store)
    for group, version in versions.items():
        try:
            params = store.manifest(group, version=version).get("params") or {}
        except (StoreError, FileNotFoundError, OSError):
            continue
        enc = {k: v for k, v in params.items() if "encoder" in k}
        if enc:
            out[f"{group}:{version}"] = json.dumps(enc, sort_keys=True, default=str)[:2000]
    return out


def promote(ref: str, *, source: Environment, target: Environment) -> Promotion:
    """Module doc. Raises :class:`PromotionRefused` (with the reason) when the target's gate fails."""
    from mmray.registry.pyfunc import ARTIFACT_PATH, load_pyfunc

    if source.name == target.name:
        raise PromotionRefused(f"--from and --to are both {source.name!r}")
    src = _client(source)
    mv = source_version(src, ref)
    with tempfile.TemporaryDirectory(prefix="mmray-promote-") as tmp:
        local = src.download_artifacts(mv.run_id, ARTIFACT_PATH, tmp)
        model = load_pyfunc(local, suppress_warnings=True)
        metrics, versions = evaluate(model, target)
        gate_cfg = GateConfig(**{**DEFAULT_GATE, **(target.promotion.get("gate") or {})})
        gate = check_gate(metrics, gate_cfg)
        min_n = int(target.promotion.get("min_patients", 10))
        where = f"{mv.name} v{mv.version} from {source.name!r} to {target.name!r}"
        if not gate.passed:
            raise PromotionRefused(f"{where} refused: {target.name!r} gate failed: {gate.reason} on "
                                   f"{int(metrics['n_patients'])} re-validation patients")
        if metrics["n_patients"] < min_n:
            raise PromotionRefused(f"{where} refused: only {int(metrics['n_patients'])} re-validation patients "
                                   f"in {target.name!r} (promotion.min_patients {min_n})")
        run = src.get_run(mv.run_id)
        tags = {**run.data.tags, **(mv.tags or {})}
        tags.update({TAG + f"encoder.{k}": v for k, v in encoder_identity(source, tags).items()})
        tags.update({P + "source_env": source.name, P + "source_model": mv.name, P + "source_version": str(mv.version),
                     P + "source_run_id": mv.run_id, P + "target_env": target.name, P + "gate_reason": gate.reason,
                     P + "data_versions": json.dumps(versions, sort_keys=True),
                     P + "metrics": json.dumps(metrics, sort_keys=True),
                     P + "promoted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
        with writing_as(target):
            return _write_target(target, mv, run, tags=tags, local=local, metrics=metrics, reason=gate.reason)


def _write_target(target: Environment, mv, run, *, tags, local: str, metrics, reason) -> Promotion:
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    from mmray.registry.pyfunc import ARTIFACT_PATH
    from mmray.registry.registry import Registry

    tracking, _ = target.mlflow_uris()
    check_registry_write(tracking)
    reg = Registry(RegistryConfig(tracking_uri=tracking, experiment=EXPERIMENT), store=target.store)
    client = reg.client
    run_tags = {k: v[:7900] for k, v in tags.items()}
    new = client.create_run(reg.experiment_id, run_name=f"promote {mv.name} v{mv.version}", tags=run_tags)
    rid = new.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in sorted(run.data.params.items())]
    mlist = [Metric(k, float(v), now, 0) for k, v in sorted(run.data.metrics.items()) if math.isfinite(float(v))]
    mlist += [Metric(f"promotion.{k}", float(v), now, 0) for k, v in sorted(metrics.items())]
    for i in range(0, max(len(params), len(mlist)), 100):
        client.log_batch(rid, metrics=mlist[i:i + 100], params=params[i:i + 100])
    client.log_artifacts(rid, local, ARTIFACT_PATH)
    try:
        client.create_registered_model(mv.name, tags={k: v for k, v in tags.items() if k in (
            TAG + "kind", TAG + "model", TAG + "task", TAG + "signature")})
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise RegistryError(f"cannot create {mv.name!r} in {target.name!r}'s registry: {e}") from e
    new_mv = client.create_model_version(mv.name, f"runs:/{rid}/{ARTIFACT_PATH}", run_id=rid, tags=tags,
                                         description=f"promoted from {tags[P + 'source_env']} v{mv.version}: {reason}")
    alias = str(target.promotion.get("alias", "champion"))
    client.set_registered_model_alias(mv.name, alias, new_mv.version)
    client.set_terminated(rid)
    log.info("promote: %s v%s -> %s v%s @%s", mv.name, mv.version, target.name, new_mv.version, alias)
    return Promotion(name=mv.name, source_version=str(mv.version), target_version=str(new_mv.version), alias=alias,
                     metrics=metrics, reason=reason, target_run_id=rid, tags=tags)
