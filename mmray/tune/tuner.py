"""``mmray tune``: Ray Tune (Optuna search, ASHA early stopping) over one model's hyperparameters.

Each trial trains the config on every saved fold (:mod:`mmray.tune.trainable`)
and reports the fold-mean held-out score ``cv_score``; Optuna proposes configs
from the search space (:mod:`mmray.tune.space`), ASHA stops trials that are
behind at equal budgets.  Every trial is an MLflow run (params, per-step
metrics, its trial folder as artifacts) through Ray's
``MLflowLoggerCallback``; tracking goes to ``mlflow.tracking_uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///<store>/_mlflow/mlflow.db``
(:func:`mmray.registry.config.resolve_tracking`).

The best config (highest last ``cv_score``) is then (``refit``)
cross-validated again with ``mmray train`` on the same folds (results table
and ablation under ``<output>/refit_cv``; optimistic by selection: the
config was chosen on these folds) and fitted on every patient (inner
validation split for early stopping) into ``<output>/best_model``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmray import logs
from mmray import uri as uri_mod
from mmray.config import to_dict
from mmray.errors import DataError
from mmray.store import FeatureStore
from mmray.train import results as R
from mmray.train.classic_runner import CLASSIC_MODELS
from mmray.train.config import InterpretConfig, ModelEntry, TrainJobConfig
from mmray.train.cv import load_job_data, run_train, settings_of, task_rows
from mmray.train.fold_fit import FoldRows, heec_columns, heec_hparams, heec_labels, prepare_torch_fold
from mmray.train.folds import inner_split
from mmray.train.preprocess import ModalityLayout
from mmray.tune.config import TuneJobConfig
from mmray.tune.space import decode, resolved_space, split_params, to_tune
from mmray.tune.trainable import METRIC, TrialData, trainable

log = logging.getLogger("mmray.tune")


@dataclass
class TuneReport:
    run: str
    output: str
    trials: pd.DataFrame
    best_config: dict
    best_score: float
    refit: object | None = None  # mmray.train.cv.TrainReport
    best_model: str | None = None
    tracking_uri: str | None = None
    files: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if not len(self.trials) or not (self.trials["status"] == "TERMINATED").any():
            return 1
        refit_failed = self.refit is not None and self.refit.exit_code != 0
        return 3 if refit_failed or (self.trials["status"] == "ERROR").any() else 0

    def text(self) -> str:
        best = json.dumps(self.best_config, default=str)
        head = f"tune {self.run}: {len(self.trials)} trial(s), best {METRIC}={self.best_score:.3f} with {best}; "
        lines = [head + f"results in {self.output}"]
        for _, t in self.trials.sort_values(METRIC, ascending=False, na_position="last").iterrows():
            lines.append(f"  {t['trial_id']} {t['status']:<10} {METRIC}={t[METRIC]:.3f} "
                         f"iterations={t['iterations']} {t['config']}")
        if self.refit is not None:
            lines += ["refit (cross-validated again on the same folds):", self.refit.text()]
        if self.best_model:
            lines.append(f"best model fitted on every patient: {self.best_model}")
        return "\n".join(lines)


def train_config(cfg: TuneJobConfig, *, hparams: dict, train: dict, executor: str, output: str | None,
                 run_name: str) -> TrainJobConfig:
    """The ``mmray train`` config that cross-validates ``hparams`` the way the tuner scored it."""
    t = dataclasses.replace(cfg.train, executor=executor, **{k: v for k, v in train.items()
                                                             if k in ("lr", "weight_decay", "batch_size")})
    return TrainJobConfig(store=cfg.store, labels_group=cfg.labels_group, tasks=(cfg.task,),
                          modality_sets={"tuned": tuple(cfg.modalities)},
                          models=(ModelEntry(cfg.model, sets=("tuned",), hparams=hparams),), folds=cfg.folds,
                          train=t, lgbm=dataclasses.replace(cfg.lgbm, executor=executor), preprocess=cfg.preprocess,
                          n_boot=cfg.n_boot, seed=cfg.seed, run_name=run_name, output=output,
                          tile_group=cfg.tile_group, max_tiles=cfg.max_tiles, mlflow=cfg.mlflow,
                          interpret=InterpretConfig(enabled=False))  # scores only: `mmray train` interprets


def _trials_table(results) -> pd.DataFrame:
    rows = []
    for r in results:
        m = r.metrics or {}
        status = "ERROR" if r.error else "TERMINATED"
        rows.append({"trial_id": m.get("trial_id", Path(str(r.path)).name), "status": status,
                     METRIC: float(m.get(METRIC, float("nan"))), "iterations": int(m.get("training_iteration", 0)),
                     "config": json.dumps(decode(r.config or {}), default=str, sort_keys=True),
                     "error": str(r.error)[:500] if r.error else ""})
    return pd.DataFrame(rows)


def _concurrency(cfg: TuneJobConfig) -> int:
    """Trials at once; MIL models leave one CPU free for the Ray Data tasks that stream the tile bags
    (trials holding every CPU stall them)."""
    import math

    import ray

    n = cfg.search.max_concurrent
    if "tiles" in cfg.modalities:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(n, math.floor((cpus - 1) / cfg.trial_cpus)))
    return n


def _close_abandoned_trials(tracking_uri: str, experiment: str, run: str) -> None:
    """Trial runs of this tune run that a killed job left RUNNING: KILLED, before the trials start again."""
    from mlflow import MlflowClient

    from mmray.registry.abandoned import close_abandoned

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        close_abandoned(client, [exp.experiment_id], match=f"tags.`mmray.tune_run` = '{run}'")


def run_tune(cfg: TuneJobConfig) -> TuneReport:
    """Run the search (module doc); returns the report with trials, best config and refit."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from mmray.registry.config import RegistryConfig, resolve_tracking

    store = FeatureStore(cfg.store)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    run = cfg.run_name or f"tune-{cfg.model}-{stamp}"
    output = cfg.output or R.default_output(store.uri, run)
    workdir = Path(cfg.workdir or (Path(output) / "tune" if not uri_mod.is_s3(output) else Path("mmray_work") / run))
    base = train_config(cfg, hparams=dict(cfg.fixed), train={}, executor="local", output=output, run_name=run)
    data = load_job_data(base, store, ModalityLayout())
    missing = [m for m in cfg.modalities if m not in data.available]
    if missing:
        raise DataError(f"no data for modalities {missing} in {store.uri}; ingest them or drop them from modalities")
    table = task_rows(data.table, cfg.task)
    classes = sorted(table["subtype"].astype(str).unique()) if cfg.task == "subtype" else None
    trial_data = TrialData(table=table, folds=data.folds, model=cfg.model, task=cfg.task,
                           modalities=tuple(cfg.modalities), classes=classes, settings=settings_of(base),
                           n_folds=cfg.folds.n_folds, fixed=dict(cfg.fixed), repeat_folds=data.repeat_folds)
    space = resolved_space(cfg)
    per_fold = cfg.model == "heec" or cfg.model in CLASSIC_MODELS  # one report per fold of every repeat
    max_t = cfg.scheduler.max_t or (cfg.folds.n_folds * cfg.folds.repeats if per_fold else cfg.train.max_epochs)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(cfg.scheduler.grace_period,
                                                                                             max_t),
                               reduction_factor=cfg.scheduler.reduction_factor)
                 if cfg.scheduler.kind == "asha" else FIFOScheduler())
    search_alg = None
    max_concurrent = _concurrency(cfg)
    if cfg.search.algorithm == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search_alg = ConcurrencyLimiter(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.search.seed)),
                                        max_concurrent=max_concurrent)
    tracking, _ = resolve_tracking(RegistryConfig(tracking_uri=cfg.mlflow.tracking_uri, workdir=cfg.mlflow.workdir),
                                   store=store.uri)
    if tracking.startswith("sqlite:///"):
        Path(tracking[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    callbacks = [MLflowLoggerCallback(tracking_uri=tracking, experiment_name=cfg.mlflow.experiment,
                                      save_artifact=True, tags={"mmray.tune_run": run, "mmray.model": cfg.model,
                                                                "mmray.task": cfg.task,
                                                                "mmray.folds": f"folds@{data.folds_version}"})] \
        if cfg.mlflow.enabled else []
    if cfg.mlflow.enabled:
        _close_abandoned_trials(tracking, cfg.mlflow.experiment, run)
    fn = tune.with_resources(tune.with_parameters(trainable, data=trial_data), {"cpu": cfg.trial_cpus})
    workdir.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(fn, param_space=to_tune(space),
                       tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg,
                                                   scheduler=scheduler, num_samples=cfg.search.num_samples,
                                                   max_concurrent_trials=None if search_alg else max_concurrent),
                       run_config=tune.RunConfig(name=run, storage_path=str(workdir.resolve()), callbacks=callbacks,
                                                 verbose=logs.tune_verbosity()))
    log.info("tune %s: %s on %s, %d trial(s), %d folds, space %s", run, cfg.model, list(cfg.modalities),
             cfg.search.num_samples, cfg.folds.n_folds, sorted(space))
    with logs.printed_to_log("ray.tune.output"):  # Tune prints its experiment table: to the log file
        results = tuner.fit()
    trials = _trials_table(results)
    ok = [r for r in results if not r.error and r.metrics and METRIC in r.metrics]
    if not ok:
        raise DataError(f"no tune trial finished; errors: {trials['error'].tolist()[:3]}")
    best = results.get_best_result(metric=METRIC, mode="max", scope="last")
    best_cfg = decode(best.config)
    report = TuneReport(run, output, trials, best_cfg, float(best.metrics[METRIC]), tracking_uri=tracking)
    hp, train = split_params(best.config, model=cfg.model, fixed=cfg.fixed)
    if cfg.refit:
        refit_cfg = train_config(cfg, hparams=hp, train=train, executor=cfg.refit_executor,
                                 output=f"{output.rstrip('/')}/refit_cv", run_name=f"{run}-refit")
        report.refit = run_train(refit_cfg)
        report.best_model = fit_best(cfg, refit_cfg, data, table, classes, hp, output=output)
    files = {"trials.parquet": R.parquet_bytes(trials),
             "best.json": R.json_bytes({"run": run, "model": cfg.model, "task": cfg.task, "modalities": cfg.modalities,
                                        "best_config": best_cfg, "hparams": hp, "train": train,
                                        METRIC: report.best_score, "folds": f"folds@{data.folds_version}",
                                        "space": {k: to_dict(v) for k, v in space.items()},
                                        "tracking_uri": tracking, "best_model": report.best_model,
                                        "config": to_dict(cfg)})}
    report.files = R.write_outputs(output, files)
    return report


def fit_classic_best(model: str, hp: dict, *, modalities, rows: pd.DataFrame, settings):
    """A classical family or the ensemble fitted on every patient (no early stopping to hold rows out for)."""
    from mmray.train.ensemble import StackedEnsemble
    from mmray.train.fold_classic import ClassicPipeline

    if model == "ensemble":
        return StackedEnsemble(modalities=modalities, top_k_var=settings.top_k_var, screen=settings.screen,
                               pca=settings.pca,
                               **{"seed": settings.seed, **hp}).fit(rows)
    return ClassicPipeline.from_settings(model, modalities=modalities, hparams=hp, settings=settings,
                                         seed=settings.seed).fit(rows)


def fit_best(cfg: TuneJobConfig, refit_cfg: TrainJobConfig, data, table: pd.DataFrame, classes, hp: dict, *,
             output: str) -> str:
    """Fit the chosen config on every patient (inner split for early stopping); saved to ``<output>/best_model``."""
    from mmray.train.ray_lgbm import fit_heec
    from mmray.train.ray_torch import fit_torch

    settings = settings_of(refit_cfg)
    fi, vi = inner_split(table, val_fraction=settings.val_fraction, seed=settings.seed)
    rows = FoldRows(fit=table.iloc[fi], val=table.iloc[vi], test=table.iloc[vi])
    with tempfile.TemporaryDirectory(prefix="mmray-best-") as tmp:
        out_dir = Path(tmp) / "best_model"
        out_dir.mkdir()
        if cfg.model in CLASSIC_MODELS:
            fitted = fit_classic_best(cfg.model, hp, modalities=cfg.modalities, rows=table, settings=settings)
            (out_dir / "classic.pkl").write_bytes(pickle.dumps(fitted))
        elif cfg.model == "heec":
            from mmray.models.registry import build_model

            cols = heec_columns(rows.fit, cfg.modalities, ModalityLayout())
            hpl, _ = heec_hparams(hp, n_rows=len(rows.fit), seed=settings.seed)
            heec = build_model("heec", task=cfg.task, modality_dims={}, n_out=len(classes or []) or 1, **hpl)
            val = {f"{k}_val": v for k, v in heec_labels(cfg.task, rows.val, classes).items()}
            fit_heec(heec, rows.fit[cols], **heec_labels(cfg.task, rows.fit, classes), X_val=rows.val[cols], **val,
                     executor=settings.lgbm_executor,
                     workers=settings.lgbm_workers, run_dir=Path(tmp) / "ray_run")
            (out_dir / "heec.pkl").write_bytes(pickle.dumps(heec))
            heec.booster_.save_model(str(out_dir / "model.txt"))
            (out_dir / "columns.json").write_text(json.dumps(cols))
        else:
            tf = prepare_torch_fold(model=cfg.model, hparams=hp, task=cfg.task, modalities=cfg.modalities, rows=rows,
                                    fold=0, classes=classes, settings=settings)
            fit = fit_torch(tf.spec, train=tf.cols["fit"], val=tf.cols["val"], run_dir=Path(tmp) / "ray_run",
                            executor=settings.executor, workers=settings.workers, use_gpu=settings.use_gpu,
                            max_failures=settings.max_failures, tiles=tf.tiles,
                            extra_files={"preprocess.pkl": pickle.dumps(tf.pre)})
            for f in Path(fit.checkpoint).iterdir():
                if f.is_file() and not f.name.startswith("."):
                    shutil.copy2(f, out_dir / f.name)
        (out_dir / "best.json").write_text(json.dumps({"model": cfg.model, "task": cfg.task, "hparams": hp,
                                                       "modalities": list(cfg.modalities),
                                                       "folds": f"folds@{data.folds_version}"}, default=str))
        files = {f"best_model/{f.name}": f.read_bytes() for f in out_dir.iterdir()}
    R.write_outputs(output, files)
    return f"{output.rstrip('/')}/best_model"
