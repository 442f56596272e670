"""The cross-validation results table: per fold, per (model, modality set) summary, files, MLflow.

``results`` (one row per task x model x modality set x fold)::

    run, task, model, modality_set, modalities, repeat, fold, status (ok | error | skipped), error,
    n_fit, n_val, n_test, best_epoch, seconds,
    harrell_c, uno_c, td_auc, ibs            (survival tasks; NaN otherwise)
    auc, balanced_accuracy                   (subtype)
    response_accuracy, response_balanced_accuracy, response_auc, toxicity_auroc,
    toxicity_auroc__<label>, task_weight_<task>   (multi-task models)

``summary`` (one row per task x model x modality set): ``n_folds_ok`` and, for
every metric, ``<metric>_mean`` and ``<metric>_sd`` over the folds of every
CV repeat (``folds.repeats``; ``n_repeats``), plus
``<headline>_ci_low`` / ``_ci_high``: a 95% percentile bootstrap interval of
the fold-mean headline metric (Harrell's C or AUC), resampling patients
within each test fold (so fold-specific risk scales never mix).

Files under ``<output>`` (a local folder or ``s3://``; by default
``<store>/_results/<run>``): ``results.parquet``, ``summary.parquet``,
``predictions.parquet`` (held-out outputs with labels, for Kaplan-Meier
plots), ``importances.parquet`` (HEEC gain per fold), ``attention.parquet``
(per-tile attention of MIL models on their test folds, for slide heatmaps:
:mod:`mmray.train.attention`), ``ablation.csv``,
``ablation.png`` and ``results.json`` (config, data versions, folds, all
tables as records).
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.train.evaluate import HEADLINE, SUBTYPE_METRICS, SURVIVAL_METRICS, headline_metric

log = logging.getLogger(__name__)
KEYS = ["task", "model", "modality_set"]
# auxiliary heads of multi-task models (mmray.train.gnn_fold.score_aux_tasks)
AUX_METRICS = ("response_accuracy", "response_balanced_accuracy", "response_auc", "toxicity_auroc")
ALL_METRICS = SURVIVAL_METRICS + SUBTYPE_METRICS + AUX_METRICS


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fold_mean_ci(task: str, preds: pd.DataFrame, *, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the fold-mean headline metric, resampling patients inside each fold."""
    if n_boot <= 0 or preds.empty:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    folds = []
    for _, g in preds.groupby(_fold_keys(preds), sort=True):
        if task == "subtype":
            out = g[[c for c in g.columns if c.startswith("out_")]].to_numpy()
            folds.append((out, None, None, g["y"]))
        else:
            folds.append((g["risk"].to_numpy(), g["time_days"], g["event"], None))
    stats = []
    for _ in range(n_boot):
        vals = []
        for out, t, e, y in folds:
            idx = rng.integers(0, len(out), size=len(out))
            try:
                vals.append(headline_metric(task, output=out[idx],
                                            time_days=None if t is None else t.to_numpy(float)[idx],
                                            event=None if e is None else e.to_numpy(bool)[idx],
                                            subtype=None if y is None else y.to_numpy()[idx]))
            except (DataError, ValueError):
                pass
        if len(vals) == len(folds):
            stats.append(float(np.mean(vals)))
    if len(stats) < max(1, n_boot // 2):
        return math.nan, math.nan
    q = (1 - level) / 2
    lo, hi = np.quantile(stats, [q, 1 - q])
    return float(lo), float(hi)


def _fold_keys(frame: pd.DataFrame) -> list[str]:
    """A held-out fold is ``(repeat, fold)`` under repeated CV (older results have no ``repeat``)."""
    return ["repeat", "fold"] if "repeat" in frame.columns else ["fold"]


def summarize(results: pd.DataFrame, predictions: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per (task, model, modality set): mean, sd over folds and the bootstrap CI of the headline metric."""
    rows = []
    for key, g in results.groupby(KEYS, sort=False):
        task = key[0]
        ok = g[g["status"] == "ok"]
        row = dict(zip(KEYS, key))
        row["modalities"] = g["modalities"].iloc[0]
        row["n_folds"] = int(len(g.drop_duplicates(_fold_keys(g))))
        row["n_repeats"] = int(g["repeat"].nunique()) if "repeat" in g else 1
        row["n_folds_ok"] = len(ok)
        for m in ALL_METRICS:
            if m in ok:
                row[f"{m}_mean"], row[f"{m}_sd"] = _mean_sd(ok[m])
        head = HEADLINE[task]
        sel = predictions
        for k, v in zip(KEYS, key):
            sel = sel[sel[k] == v] if k in sel else sel.iloc[0:0]
        if len(sel):
            keys = [k for k in _fold_keys(ok) if k in sel]
            sel = sel.merge(ok[keys].drop_duplicates(), on=keys, how="inner")
        sel = sel.drop(columns=KEYS, errors="ignore").dropna(axis=1, how="all")  # other tasks' output columns
        row[f"{head}_ci_low"], row[f"{head}_ci_high"] = fold_mean_ci(task, sel,
                                                                     n_boot=n_boot, seed=seed)
        row["headline"] = head
        row["seconds"] = float(g["seconds"].sum()) if "seconds" in g else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """Plain-text table: task, model, set, headline mean +- sd [CI], other metrics."""
    lines = []
    for _, r in summary.iterrows():
        head = r["headline"]
        ci = f"[{r.get(f'{head}_ci_low', math.nan):.3f}, {r.get(f'{head}_ci_high', math.nan):.3f}]"
        others = " ".join(f"{m}={r[f'{m}_mean']:.3f}±{r[f'{m}_sd']:.3f}" for m in
                          (SUBTYPE_METRICS if r["task"] == "subtype" else SURVIVAL_METRICS) + AUX_METRICS
                          if m != head and f"{m}_mean" in r and pd.notna(r.get(f"{m}_mean")))
        lines.append(f"{r['task']:<16} {r['model']:<17} {r['modality_set']:<14} {head} "
                     f"{r.get(f'{head}_mean', math.nan):.3f} ± {r.get(f'{head}_sd', math.nan):.3f} {ci} "
                     f"folds {r['n_folds_ok']}/{r['n_folds']}  {others}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files
def default_output(store_uri: str, run: str) -> str:
    return f"{store_uri.rstrip('/')}/_results/{run}"


def write_outputs(output: str, files: Mapping[str, bytes]) -> list[str]:
    """Write ``{name: bytes}`` under ``output`` (local folder or ``s3://``); returns the paths."""
    from mmray import uri as uri_mod
    from mmray.store import fsio

    fs, root = uri_mod.filesystem(output)
    root = root.rstrip("/")
    paths = []
    for name, blob in files.items():
        fsio.put_bytes(fs, f"{root}/{name}", blob)
        paths.append(f"{output.rstrip('/')}/{name}")
    return paths


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return None if not np.isfinite(o) else float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    return json.dumps(_clean(obj), indent=2, default=default).encode()


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def records(frame: pd.DataFrame) -> list[dict]:
    return _clean(json.loads(frame.to_json(orient="records")))


# --------------------------------------------------------------------------- MLflow
def log_to_mlflow(*, tracking_uri: str, artifact_location: str | None, experiment: str, run: str,
                  params: Mapping, tags: Mapping[str, str], results: pd.DataFrame, summary: pd.DataFrame,
                  files: Mapping[str, bytes]) -> str:
    """A parent run for the job (params, artifacts) with one nested run per (task, model, set); parent id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    logging.getLogger("alembic").setLevel(logging.WARNING)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    from mmray.registry.abandoned import close_abandoned  # (lazy: registry imports train)

    close_abandoned(client, [exp_id], match=f"attributes.run_name = '{run}' and tags.`mmray.kind` = 'train'")
    parent = client.create_run(exp_id, run_name=run, tags={**tags, "mmray.kind": "train"})
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in files.items():
            (Path(tmp) / name).write_bytes(blob)
        client.log_artifacts(pid, tmp)
    for _, s in summary.iterrows():
        name = f"{s['task']}/{s['model']}/{s['modality_set']}"
        child = client.create_run(exp_id, run_name=name, tags={**tags, "mlflow.parentRunId": pid,
                                                                "mmray.task": s["task"], "mmray.model": s["model"],
                                                                "mmray.modality_set": s["modality_set"]})
        cid = child.info.run_id
        g = results[(results["task"] == s["task"]) & (results["model"] == s["model"])
                    & (results["modality_set"] == s["modality_set"])]
        now = int(time.time() * 1000)
        metrics = [Metric(f"fold_{m}", float(v), now, int(f)) for _, r in g.iterrows() for m in ALL_METRICS
                   for f, v in [(r["fold"], r.get(m))] if v is not None and np.isfinite(v)]
        metrics += [Metric(k, float(v), now, 0) for k, v in s.items()
                    if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and np.isfinite(v)]
        cparams = [Param("modalities", str(s["modalities"]))]
        hp = g["hparams"].iloc[0] if "hparams" in g and len(g) else "{}"
        cparams += [Param(f"hp.{k}", str(v)[:6000]) for k, v in json.loads(hp or "{}").items()]
        for i in range(0, max(len(metrics), len(cparams)), 500):
            client.log_batch(cid, metrics=metrics[i:i + 500], params=cparams[i:i + 500])
        client.log_batch(cid, tags=[RunTag("mmray.status", "ok" if s["n_folds_ok"] == s["n_folds"] else "partial")])
        client.set_terminated(cid)
    client.set_terminated(pid)
    return pid
