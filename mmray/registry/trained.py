"""``mmray register``: a tuned model, gated on its cross-validated metric, registered with lineage.

:func:`register_tuned` takes a Ray Tune run's refitted best model
(:mod:`mmray.registry.tune_run` reads it), wraps it with its fitted
preprocessing as a :class:`~mmray.registry.tuned_model.TunedPyfunc` (inputs:
training-table columns by name, e.g. ``clinical__age``, ``expression__MKI67``,
``has_expression``; outputs: ``risk`` and ``surv_<t>d``; the same
``/v1/predict`` API as the signature models), gates it on the refit
cross-validation's metrics (``registry.gate``, default ``harrell_c_mean >=
0.55``) and records it with :meth:`Registry.record`: one MLflow run with
params, metrics, lineage tags and the outcome; a registered version and the
``champion`` alias (by ``registry.champion_policy``) when it passes.

Refused, recorded as ``skipped`` with the reason: subtype models (the
served API returns survival risk), models on tile bags (``porpoise``: a
flat feature dict cannot carry a slide's tiles), a refit cross-validation
with failed folds, and models whose inputs include text columns.

Runs go to the MLflow experiment ``mmray-models`` unless
``registry.experiment`` is set to something other than the signature
default. Registering the same best model with the same gate and name again
returns the earlier outcome (``resumed``) unless ``force``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field

import numpy as np

import mmray
from mmray.config import config_hash
from mmray.errors import RegistryError
from mmray.models.batch import BAG
from mmray.registry.config import RegistryConfig
from mmray.registry.lineage import TAG, data_key, model_name
from mmray.registry.registry import Candidate, Outcome, Registry
from mmray.registry.tune_run import TuneRun, load_tune_run, resolve_tune_output
from mmray.registry.tuned_model import (
    ClassicPredictor,
    Columns,
    HeecPredictor,
    TorchPredictor,
    TunedEstimator,
    TunedPyfunc,
    classic_columns,
    heec_model_columns,
    mlflow_type,
    torch_columns,
)
from mmray.store import FeatureStore
from mmray.store.manifest import git_revision
from mmray.train.classic_runner import CLASSIC_MODELS

log = logging.getLogger(__name__)
TUNED_EXPERIMENT = "mmray-models"
DEFAULT_PREFIX = "mmray__"
DEFAULT_TIMES_DAYS = (365.0, 730.0, 1095.0, 1825.0)


@dataclass(frozen=True)
class RegisterConfig:
    """``mmray register`` (``ray_jobs/configs/register.yaml``)."""

    store: str
    tune_run: str | None = None  # required: a tune output folder, or a run name under <store>/_results/
    name: str | None = None  # registered model name; default mmray__<model>
    force: bool = False  # register again even when this best model was registered with this gate
    survival_times_days: tuple[float, ...] = DEFAULT_TIMES_DAYS
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def validate(self):
        if not self.tune_run:
            yield ("tune_run", "required: the output folder of `mmray tune` or its run name under <store>/_results/")
        if any(t <= 0 for t in self.survival_times_days):
            yield ("survival_times_days", "times must be > 0 days")


@dataclass(frozen=True)
class TunedLineage:
    """Where a tuned model came from (every field becomes an ``mmray.*`` tag)."""

    model: str
    task: str
    modalities: tuple[str, ...]
    hparams: dict
    tune_run: str
    tune_output: str
    model_hash: str  # of the best model's files
    feature_versions: dict[str, str]
    folds: str
    folds_hash: str
    config_hash: str  # of the refit cross-validation's config (what the gate's metrics come from)
    tune_config_hash: str
    register_hash: str  # model hash + name + gate + survival grid: identifies this registration
    git_revision: str | None  # of the code that wrapped and registered the model
    store: str
    mmray_version: str

    signature = None  # not a gene-signature model (Outcome.signature, /v1/models "signature")

    @property
    def data_key(self) -> str:
        return data_key(feature_versions=self.feature_versions, folds=self.folds, folds_hash=self.folds_hash,
                        store=self.store)

    def model_tags(self) -> dict[str, str]:
        return {TAG + "kind": "tuned", TAG + "model": self.model, TAG + "task": self.task}

    def model_description(self) -> str:
        return (f"mmray {self.model} ({self.task}) on {', '.join(self.modalities)}, tuned with Ray Tune; "
                f"inputs are training-table columns by name")

    def run_tags(self) -> dict[str, str]:
        tags = {"kind": "tuned", "model": self.model, "task": self.task, "modalities": ",".join(self.modalities),
                "hparams": json.dumps(self.hparams, sort_keys=True, default=str)[:7000],
                "tune_run": self.tune_run, "tune_output": self.tune_output, "model_hash": self.model_hash,
                "feature_versions": json.dumps(self.feature_versions, sort_keys=True), "folds": self.folds,
                "folds_hash": self.folds_hash, "config_hash": self.config_hash,
                "tune_config_hash": self.tune_config_hash, "register_hash": self.register_hash,
                "data_key": self.data_key, "git_revision": self.git_revision or "unknown", "store": self.store,
                "mmray_version": self.mmray_version,
                **{f"feature_version.{g}": v for g, v in sorted(self.feature_versions.items())}}
        return {TAG + k: v for k, v in tags.items()}

    def version_tags(self, *, features: list[str], metrics: dict[str, float]) -> dict[str, str]:
        tags = self.run_tags()
        tags[TAG + "features"] = json.dumps(list(features))
        tags[TAG + "metrics"] = json.dumps({k: float(v) for k, v in sorted(metrics.items())})
        return tags


def _lineage(run: TuneRun, *, store: FeatureStore, name: str, cfg: RegistryConfig, times_days) -> TunedLineage:
    register_hash = config_hash({"model_hash": run.model_hash, "name": name, "gate": cfg.gate,
                                 "times_days": list(times_days), "store": store.uri})
    return TunedLineage(model=run.model, task=run.task, modalities=run.modalities, hparams=run.hparams,
                        tune_run=run.run, tune_output=run.output, model_hash=run.model_hash,
                        feature_versions=run.feature_versions, folds=run.folds_ref,
                        folds_hash=run.folds_hash(store), config_hash=str(run.refit.get("config_hash", "unknown")),
                        tune_config_hash=config_hash(run.best.get("config") or {}), register_hash=register_hash,
                        git_revision=git_revision(), store=store.uri, mmray_version=mmray.__version__)


class _Refused(Exception):
    """The model cannot be served (the reason is recorded, nothing registered)."""


def _refusal(run: TuneRun) -> str | None:
    """Why this tune run's model cannot be served from a feature dict, or None."""
    from mmray.models.registry import get_spec

    if run.task == "subtype":
        return ("subtype models are not served: the prediction API returns survival risk and curves; "
                "tune a survival task (task=survival_cox or survival_discrete)")
    if get_spec(run.model).needs_bag or BAG in run.modalities:
        return (f"{run.model} on {list(run.modalities)} reads tile bags (every tile embedding of a patient's "
                f"slides), which a flat feature dict cannot carry; serve a model on patient-level slide "
                f"features instead (modality 'slide', e.g. heec or attention_fusion)")
    return run.failed_folds()


def _predictor(run: TuneRun, table) -> tuple[object, Columns, dict | None]:
    """``(predictor, columns, time bins or None)`` of the best model."""
    if run.model in CLASSIC_MODELS:
        fitted = run.classic()
        return ClassicPredictor(fitted), classic_columns(fitted, table_columns=list(table.columns)), None
    if run.model == "heec":
        heec = run.heec()
        return HeecPredictor(heec), heec_model_columns(heec), None
    pre, spec, weights = run.torch_parts()
    predictor = TorchPredictor(preprocessor=pre, spec=spec, state_dict=weights)
    cols = torch_columns(pre, model_modalities=predictor.modalities, table_columns=list(table.columns))
    return predictor, cols, spec.bins


def build_model(run: TuneRun, table, *, name: str, times_days) -> tuple[TunedPyfunc, dict]:
    """The servable pyfunc of ``run``'s best model over ``table`` (its training rows), and run params.

    Checks that the model given only its ``features`` gives the risks the
    training code computes from whole training-table rows.
    """
    from mmray.train.evaluate import risk_of
    from mmray.train.metrics import BreslowSurvival
    from mmray.train.signatures import survival_grid

    predictor, cols, bins = _predictor(run, table)
    if cols.text:
        raise _Refused(f"input column(s) {cols.text[:10]} are text in the training table; the prediction API "
                       f"takes numbers: encode them at ingest (tables.clinical.categorical_columns one-hot)")
    full = np.asarray(predictor.outputs(table), dtype=float)  # the training code's path, whole rows
    time_days = table["time_days"].to_numpy(float)
    event = table["event"].astype(bool).to_numpy()
    baseline = None
    if run.task == "survival_cox":
        baseline = BreslowSurvival().fit(full.reshape(-1), time_days=time_days, event=event)
    estimator = TunedEstimator(task=run.task, columns=cols, predictor=predictor, baseline=baseline, bins=bins)
    risk, want = estimator.predict(table[cols.features].to_numpy(dtype=float)), risk_of(run.task, full)
    if not np.allclose(risk, want, rtol=1e-6, atol=1e-6):
        worst = float(np.max(np.abs(risk - want)))
        raise RegistryError(f"{run.model} of tune run {run.output}: risks from its {len(cols.features)} features "
                            f"differ from the whole-row risks by up to {worst:.3g}; not registering")
    grid = survival_grid(times_days, train_time_days=time_days)
    info = {"model_name": name, "model": run.model, "task": run.task, "tune_run": run.run}
    model = TunedPyfunc(estimator, features=cols.features, times_days=grid, info=info,
                        input_types=[mlflow_type(table[f].dtype) for f in cols.features])
    params = {"model": run.model, "task": run.task, "modalities": ",".join(run.modalities), "tune_run": run.run,
              "n_patients": len(table), "n_events": int(event.sum()), "n_features": len(cols.features),
              "n_input_columns": len(cols.inputs), "survival_times_days": ",".join(f"{t:g}" for t in grid),
              **{f"hp.{k}": v for k, v in run.hparams.items()},
              **{f"train.{k}": v for k, v in (run.best.get("train") or {}).items()}}
    return model, params


def _earlier(registry: Registry, lineage: TunedLineage):
    flt = (f"tags.`{TAG}register_hash` = '{lineage.register_hash}' and attributes.status = 'FINISHED'")
    runs = registry.client.search_runs([registry.experiment_id], filter_string=flt, max_results=1,
                                       order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def registry_config(cfg: RegistryConfig) -> RegistryConfig:
    """``cfg`` with the tuned models' experiment unless another one was chosen (module doc)."""
    if cfg.experiment == RegistryConfig().experiment:
        return dataclasses.replace(cfg, experiment=TUNED_EXPERIMENT)
    return cfg


def register_tuned(tune_output: str, *, store: str, registry: RegistryConfig, name: str | None = None,
                   times_days=DEFAULT_TIMES_DAYS, force: bool = False) -> Outcome:
    """Gate and register a tune run's best model (module doc); returns what happened.

    ``tune_output``: the run's output folder (local or ``s3://``) or its name
    under ``<store>/_results/``. ``name``: the registered model name
    (default ``mmray__<model>``).
    """
    output = resolve_tune_output(tune_output, store=store)
    run = load_tune_run(output)
    name = name or model_name(run.model, prefix=DEFAULT_PREFIX)
    cfg = registry_config(registry)
    st = FeatureStore(store)
    lineage = _lineage(run, store=st, name=name, cfg=cfg, times_days=times_days)
    reg = Registry(cfg, store=store)
    if not force:
        earlier = _earlier(reg, lineage)
        if earlier is not None:
            log.info("register: %s of %s was recorded before (run %s); force=true registers again", run.model,
                     run.run, earlier.info.run_id)
            return dataclasses.replace(Registry.outcome_of_run(earlier), signature=None)
    reg.close_abandoned(f"tags.`{TAG}register_hash` = '{lineage.register_hash}'")  # a killed register's run
    params = {"model": run.model, "task": run.task, "tune_run": run.run, "gate.metric": cfg.gate.metric,
              "gate.threshold": cfg.gate.threshold, "gate.require_ci_low": cfg.gate.require_ci_low}
    reason = _refusal(run)
    if reason is None:
        try:
            model, more = build_model(run, run.training_table(st), name=name, times_days=times_days)
            params.update(more)
        except _Refused as e:
            reason = str(e)
    if reason is not None:
        log.warning("register: %s of %s not servable: %s", run.model, run.run, reason)
        return reg.record(Candidate(name, lineage, "skipped", metrics=run.metrics(), params=params, reason=reason))
    outcome = reg.record(Candidate(name, lineage, "fitted", metrics=run.metrics(), params=params, model=model))
    log.info("register: %s of %s -> %s (%s)", run.model, run.run, outcome.outcome, outcome.reason)
    return outcome


def run_register(cfg: RegisterConfig) -> Outcome:
    """``mmray register`` / ``ray_jobs/register.py``."""
    return register_tuned(cfg.tune_run, store=cfg.store, registry=cfg.registry, name=cfg.name,
                          times_days=cfg.survival_times_days, force=cfg.force)


def outcome_text(o: Outcome) -> str:
    from mmray.registry.signatures import describe

    metrics = ", ".join(f"{k}={o.metrics[k]:.3f}" for k in ("harrell_c_mean", "harrell_c_sd", "tune_cv_score")
                        if k in o.metrics)
    return f"{o.name}: {describe(o)}" + (f" [{metrics}]" if metrics else "") + (f"; run {o.run_id}" if o.run_id
                                                                                   else "")


EXIT_CODES = {"registered": 0, "gate_failed": 0, "skipped": 3}


def exit_code(o: Outcome) -> int:
    return EXIT_CODES.get(o.outcome, 1)

