"""Cross-validation on the store's saved folds: models x modality sets x folds -> results, ablation, MLflow.

:func:`run_train` (``mmray train``) joins the labels with every feature group
the requested modality sets need (point in time), loads or makes the shared
folds (:func:`mmray.train.folds.load_or_make_folds`), fits every (task,
model, modality set, fold) with :mod:`mmray.train.fold_fit` (Ray Train for
torch models and LightGBM), and writes the results table, the summary with
bootstrap intervals, the ablation table and chart
(:mod:`mmray.train.results`, :mod:`mmray.train.ablation`) into the store and
MLflow.  A fit that fails is recorded with its error and the rest go on; the
exit code is then 3.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import mmray
from mmray import uri as uri_mod
from mmray.config import config_hash, to_dict
from mmray.errors import DataError, StoreError
from mmray.models.batch import BAG
from mmray.store import FeatureStore, training_table
from mmray.train import results as R
from mmray.train.ablation import ablation_png, ablation_table
from mmray.train.config import TrainJobConfig, sets_for
from mmray.train.fold_fit import FoldSettings, fit_fold_heec, fit_fold_torch, fold_rows
from mmray.train.classic_runner import CLASSIC_MODELS, ClassicJob, run_classic_jobs
from mmray.train.folds import FOLDS_GROUP, load_or_make_repeated_folds
from mmray.train.gnn_ablation import expand_models
from mmray.train.run_extras import entry_settings, run_extras
from mmray.train.paired import paired_table
from mmray.train.preprocess import ModalityLayout

log = logging.getLogger("mmray.train")
EXIT_OK, EXIT_PARTIAL = 0, 3


@dataclass
class TrainReport:
    run: str
    output: str
    results: pd.DataFrame
    summary: pd.DataFrame
    ablation: pd.DataFrame
    predictions: pd.DataFrame
    importances: pd.DataFrame
    files: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return int((self.results["status"] == "error").sum()) if len(self.results) else 0

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.n_failed else EXIT_OK

    def text(self) -> str:
        lines = [f"run {self.run}: {len(self.results)} fold fit(s), {self.n_failed} failed; results in {self.output}",
                 R.format_summary(self.summary)]
        failed = self.results[self.results["status"] == "error"] if len(self.results) else self.results
        for _, r in failed.iterrows():
            lines.append(f"FAILED {r['task']} {r['model']} {r['modality_set']} fold {r['fold']}: {r['error']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def settings_of(cfg: TrainJobConfig) -> FoldSettings:
    t = cfg.train
    return FoldSettings(executor=t.executor, workers=t.workers, use_gpu=t.use_gpu,
                        threads_per_worker=t.threads_per_worker, max_failures=t.max_failures,
                        keep_checkpoints=t.keep_checkpoints, max_epochs=t.max_epochs, patience=t.patience,
                        batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, val_fraction=t.val_fraction,
                        grad_clip=t.grad_clip, ties=t.ties, n_bins=t.n_bins, class_weights=t.class_weights,
                        fail_at_epoch=t.fail_at_epoch, lgbm_executor=cfg.lgbm.executor, lgbm_workers=cfg.lgbm.workers,
                        top_k_var=dict(cfg.preprocess.top_k_var), screen=dict(cfg.preprocess.screen),
                        pca=dict(cfg.preprocess.pca), seed=cfg.seed,
                        tile_group=cfg.tile_group, store=cfg.store, max_tiles=cfg.max_tiles,
                        interpret=to_dict(cfg.interpret))


def task_rows(labels_table: pd.DataFrame, task: str) -> pd.DataFrame:
    """Rows usable for ``task``: positive follow-up and a known event, or a known subtype."""
    t = labels_table
    if task == "subtype":
        ok = t["subtype"].notna() & (t["subtype"].astype(str) != "")
    else:
        ok = t["time_days"].notna() & (t["time_days"] > 0) & t["event"].notna()
    return t[ok.to_numpy()].reset_index(drop=True)


@dataclass
class JobData:
    table: pd.DataFrame
    folds: pd.DataFrame
    folds_version: str
    versions: dict[str, str]
    available: set[str]  # modalities with data in the store
    repeat_folds: list[pd.DataFrame] = field(default_factory=list)  # folds of each CV repeat (0 = ``folds``)
    repeat_versions: list[str] = field(default_factory=list)


def load_job_data(cfg: TrainJobConfig, store: FeatureStore, layout: ModalityLayout) -> JobData:
    if store.latest(cfg.labels_group) is None:
        raise StoreError(f"no {cfg.labels_group!r} group in {store.uri}; run `mmray ingest` first "
                         f"(groups: {store.groups() or 'none'})")
    labels = store.read_table(cfg.labels_group)
    fold_labels = labels  # subtype tasks: every labelled patient; survival only: as the signature fan-out does
    if all(t != "subtype" for t in cfg.tasks) and {"time_days", "event"} <= set(labels.columns):
        fold_labels = labels[labels["time_days"].notna() & (labels["time_days"] > 0) & labels["event"].notna()]
    repeated = load_or_make_repeated_folds(store, fold_labels, cfg.folds.n_folds, cfg.folds.seed,
                                           cfg.folds.repeats, labels_group=cfg.labels_group)
    folds, folds_version = repeated[0]
    have = set(store.groups())
    wanted = {m for mods in cfg.modality_sets.values() for m in mods}
    groups = {g for m in wanted if m != BAG for g in layout.groups.get(m, ()) if g in have}
    available = {m for m in wanted if m != BAG and any(g in have for g in layout.groups.get(m, ()))}
    if BAG in wanted:
        from mmray.train.fold_fit import bag_group_of

        bag_groups = {bag_group_of(e.name, cfg.tile_group) for e in cfg.models}
        groups |= bag_groups & have
        if cfg.tile_group in have or bag_groups & have:
            available.add(BAG)
    table = training_table(store, labels, groups=sorted(groups))
    versions = {cfg.labels_group: store.latest(cfg.labels_group), **table.attrs.get("feature_versions", {})}
    table = table[table["patient_id"].astype(str).isin(set(folds["patient_id"].astype(str)))].reset_index(drop=True)
    return JobData(table, folds, folds_version, versions, available, [f for f, _ in repeated],
                   [v for _, v in repeated])


def run_train(cfg: TrainJobConfig) -> TrainReport:
    """Run the whole job (module doc) and return its report (files written, MLflow logged)."""
    store = FeatureStore(cfg.store)
    layout = ModalityLayout()
    run = cfg.run_name or f"train-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}"
    output = cfg.output or R.default_output(store.uri, run)
    workdir = Path(cfg.workdir or (Path(output) / "runs" if not uri_mod.is_s3(output) else Path("mmray_work") / run))
    data = load_job_data(cfg, store, layout)
    settings = settings_of(cfg)
    entries, notes = expand_models(cfg.models)
    res_rows, preds, imps, atts = [], [], [], []
    extra_tables: dict[str, list[pd.DataFrame]] = {}
    plan = []
    for task in cfg.tasks:
        for label, entry in entries:
            for set_name in sets_for(entry, cfg.modality_sets):
                mods = tuple(cfg.modality_sets[set_name])
                missing = [m for m in mods if m not in data.available]
                if missing:
                    notes.append(f"{task} {entry.name} on {set_name}: skipped, no data for {missing} in the store")
                    continue
                if entry.name in CLASSIC_MODELS and task != "survival_cox":
                    notes.append(f"{entry.name} is a survival_cox model; skipped for {task} on {set_name}")
                    continue
                if entry.name == "heec" and task == "survival_discrete":
                    notes.append(f"heec has no survival_discrete objective; skipped on {set_name}")
                    continue
                plan.append((task, entry, set_name, mods, label))
    log.info("run %s: %d model x modality-set combination(s) x %d folds x %d repeat(s); folds %s@%s", run,
             len(plan), cfg.folds.n_folds, cfg.folds.repeats, FOLDS_GROUP, ",".join(data.repeat_versions))
    tables = {t: task_rows(data.table, t) for t in cfg.tasks}
    repeats = len(data.repeat_folds)

    def base_of(task, model, set_name, mods, hparams, repeat, fold) -> dict:
        return {"run": run, "task": task, "model": model, "modality_set": set_name, "modalities": ",".join(mods),
                "repeat": repeat, "fold": fold, "hparams": json.dumps(hparams, sort_keys=True, default=str)}

    def record(base: dict, out, seconds: float) -> None:
        if isinstance(out, Exception):
            res_rows.append({**base, "status": "error", "error": str(out)[:2000], "seconds": seconds})
            return
        info = {k: v for k, v in out.info.items() if isinstance(v, (int, float, str)) and k != "checkpoint"}
        res_rows.append({**base, "status": "ok", "error": "", **info, **out.metrics, "seconds": seconds,
                         "notes": "; ".join(out.notes)[:2000]})
        key = {"task": base["task"], "model": base["model"], "modality_set": base["modality_set"],
               "repeat": base["repeat"]}
        preds.append(out.predictions.assign(**key))
        if out.importances is not None:
            imps.append(out.importances.assign(**key))
        if out.attention is not None and len(out.attention):
            atts.append(out.attention.assign(**key))
        for name, frame in out.tables.items():
            if frame is not None and len(frame):
                extra_tables.setdefault(name, []).append(frame.assign(**key))

    classic_jobs = []
    for i, (task, entry, set_name, mods, label) in enumerate(plan, 1):
        table = tables[task]
        fold_settings = entry_settings(settings, entry)
        if entry.name in CLASSIC_MODELS:  # fitted below, all at once as Ray tasks
            classic_jobs += [ClassicJob(task, entry.name, set_name, mods, dict(entry.hparams), r, f)
                             for r in range(repeats) for f in range(cfg.folds.n_folds)]
            continue
        classes = sorted(table["subtype"].astype(str).unique()) if task == "subtype" else None
        for repeat, folds in enumerate(data.repeat_folds):
            for fold in range(cfg.folds.n_folds):
                t0 = time.perf_counter()
                base = base_of(task, label, set_name, mods, entry.hparams, repeat, fold)
                rdir = f"fold{fold}" if repeat == 0 else f"repeat{repeat}_fold{fold}"
                run_dir = workdir / task / f"{label}__{set_name}" / rdir
                try:
                    rows = fold_rows(table, folds, fold=fold, val_fraction=cfg.train.val_fraction, seed=cfg.seed)
                    if entry.name == "heec":
                        out = fit_fold_heec(hparams=entry.hparams, task=task, modalities=mods, rows=rows, fold=fold,
                                            classes=classes, settings=fold_settings, run_dir=run_dir, layout=layout)
                    else:
                        out = fit_fold_torch(model=entry.name, hparams=entry.hparams, task=task, modalities=mods,
                                             rows=rows, fold=fold, classes=classes, settings=fold_settings,
                                             run_dir=run_dir, layout=layout, label=label)
                except Exception as e:  # noqa: BLE001  one failed fit is recorded; the rest of the job goes on
                    log.error("[%d/%d] %s %s %s fold %d FAILED: %s", i, len(plan), task, label, set_name, fold, e)
                    log.debug("%s", traceback.format_exc())
                    record(base, e, time.perf_counter() - t0)
                    continue
                record(base, out, time.perf_counter() - t0)
                head = "auc" if task == "subtype" else "harrell_c"
                log.info("[%d/%d] %s %-16s %-14s repeat %d fold %d/%d: %s=%.3f (%.1f s)", i, len(plan), task,
                         label, set_name, repeat, fold + 1, cfg.folds.n_folds, head,
                         out.metrics.get(head, float("nan")), time.perf_counter() - t0)
    run_classic_jobs(classic_jobs, tables=tables, folds=data.repeat_folds, settings=settings, layout=layout,
                     on_done=lambda j, out, sec: record(base_of(j.task, j.model, j.set_name, j.modalities,
                                                                j.hparams, j.repeat, j.fold), out, sec))
    results = pd.DataFrame(res_rows)
    if results.empty:
        raise DataError("nothing was trained: " + ("; ".join(notes) or "no model x modality set combination"))
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    importances = pd.concat(imps, ignore_index=True) if imps else pd.DataFrame()
    summary = R.summarize(results, predictions, n_boot=cfg.n_boot, seed=cfg.seed)
    ablation = ablation_table(summary)
    paired = paired_table(results, summary, n_boot=cfg.n_boot, seed=cfg.seed)
    meta = {"run": run, "store": store.uri, "output": output, "feature_versions": data.versions,
            "folds": f"{FOLDS_GROUP}@{data.folds_version}",
            "folds_repeats": [f"{FOLDS_GROUP}@{v}" for v in data.repeat_versions], "config": to_dict(cfg), "config_hash": config_hash(cfg),
            "mmray_version": mmray.__version__, "notes": notes,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    files = {"results.parquet": R.parquet_bytes(results), "summary.parquet": R.parquet_bytes(summary),
             "predictions.parquet": R.parquet_bytes(predictions), "ablation.csv": ablation.to_csv(index=False).encode(),
             "ablation.png": ablation_png(ablation), "paired.csv": paired.to_csv(index=False).encode()}
    if len(importances):
        files["importances.parquet"] = R.parquet_bytes(importances)
    if atts:
        files["attention.parquet"] = R.parquet_bytes(pd.concat(atts, ignore_index=True))
    more = run_extras(cfg, store, summary, {k: pd.concat(v, ignore_index=True) for k, v in extra_tables.items()},
                      entries)
    files.update(more.files)
    files["results.json"] = R.json_bytes({**meta, "results": R.records(results), "summary": R.records(summary),
                                          "ablation": R.records(ablation), "paired": R.records(paired),
                                          **more.records})
    written = R.write_outputs(output, files)
    report = TrainReport(run, output, results, summary, ablation, predictions, importances, written, notes=notes)
    if cfg.mlflow.enabled:
        report.mlflow_run_id = _log_mlflow(cfg, store, meta, results, summary, files)
    return report


def _log_mlflow(cfg, store, meta, results, summary, files) -> str | None:
    from mmray.registry.config import RegistryConfig, resolve_tracking

    tracking, artifacts = resolve_tracking(RegistryConfig(tracking_uri=cfg.mlflow.tracking_uri,
                                                          workdir=cfg.mlflow.workdir), store=store.uri)
    params = {"store": store.uri, "tasks": ",".join(cfg.tasks), "n_folds": cfg.folds.n_folds,
              "folds_seed": cfg.folds.seed, "seed": cfg.seed, "folds": meta["folds"],
              **{f"train.{k}": v for k, v in to_dict(cfg.train).items()},
              "models": json.dumps([to_dict(m) for m in cfg.models])[:6000]}
    tags = {"mmray.folds": meta["folds"], "mmray.feature_versions": json.dumps(meta["feature_versions"]),
            "mmray.config_hash": meta["config_hash"], "mmray.store": store.uri}
    try:
        return R.log_to_mlflow(tracking_uri=tracking, artifact_location=artifacts, experiment=cfg.mlflow.experiment,
                               run=meta["run"], params=params, tags=tags, results=results, summary=summary,
                               files=files)
    except Exception as e:  # noqa: BLE001  tracking is a side channel: the results are already in the store
        log.warning("MLflow logging to %s failed: %s", tracking, e)
        return None
