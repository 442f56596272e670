"""HEEC's LightGBM on Ray Train's ``LightGBMTrainer`` (data-parallel over W workers).

The driver screens the genomics columns on the training rows
(:meth:`HEEC.screen_columns`: fold-fitted, label-dependent, so it never sees
the test fold), encodes both splits, and hands them to Ray Train as Ray
Datasets: ``train`` is split across the workers (``pre_partition``), the
inner-validation ``valid`` set goes whole to every worker, so each computes
the same early-stopping metric and all stop at the same round.  Inside
:func:`heec_worker` the LightGBM network comes from
``ray.train.lightgbm.get_network_params()`` with ``tree_learner="data"``
(LightGBM's C API, which the Python package uses, supports data- and
voting-parallel learners, not feature-parallel).

Objectives: ``multiclass`` for subtype; for survival HEEC's Cox partial
likelihood (:mod:`mmray.models.lgbm_cox`).  LightGBM calls a custom objective
with each worker's own rows, so on W workers the gradients are those of the
*stratified* Cox partial likelihood with one stratum per worker shard: risk
sets are formed inside a shard.  That is still a proper partial likelihood
(the proportional-hazards model holds in every random subset, so it targets
the same risk function); it loses some efficiency because fewer pairs are
compared, and it is exactly the single-machine objective for W = 1.  The
shards are random halves (thirds, ...) of the training fold, so every shard
spans the whole follow-up range.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.models.heec import HEEC
from mmray.models.lgbm_cox import cindex_eval

log = logging.getLogger(__name__)
LABEL = "_label"


def feature_names(heec: HEEC) -> list[str]:
    """LightGBM-safe, unique names of the kept columns (HEEC's sanitised names, deduplicated)."""
    out, seen = [], {}
    for name in heec._lgb_names():
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}_{k}")
    return out


def _frame(heec: HEEC, X: pd.DataFrame, label: np.ndarray) -> pd.DataFrame:
    enc = heec.encode(X).to_numpy(dtype=np.float64)
    frame = pd.DataFrame(enc, columns=[f"f{i}" for i in range(enc.shape[1])])
    frame[LABEL] = np.asarray(label, float)
    return frame


def heec_worker(config: dict) -> None:
    """``LightGBMTrainer`` per-worker loop: shard -> ``lgb.Dataset`` -> ``lgb.train`` with the Ray network."""
    import lightgbm as lgb
    import ray.train
    from ray.train.lightgbm import get_network_params

    ctx = ray.train.get_context()
    train = ray.train.get_dataset_shard("train").materialize().to_pandas()
    names = config["feature_names"]
    params = dict(config["params"])
    params.update(get_network_params())
    params.update(tree_learner="data", pre_partition=True, num_threads=config.get("threads", 1))
    weight = train.pop("_weight").to_numpy() if "_weight" in train else None
    label = train.pop(LABEL).to_numpy()
    if weight is not None:  # drop the zero-weight rows that padded the shards to equal size
        keep = weight > 0
        train, label = train[keep], label[keep]
    train_set = lgb.Dataset(train.to_numpy(), label=label, feature_name=names, free_raw_data=False)
    valid_sets, callbacks, feval = [], [], None
    if config.get("has_valid"):
        valid = ray.train.get_dataset_shard("valid").materialize().to_pandas()
        vlabel = valid.pop(LABEL).to_numpy()
        valid_sets = [lgb.Dataset(valid.to_numpy(), label=vlabel, feature_name=names, reference=train_set)]
        callbacks = [lgb.early_stopping(config["early_stopping_rounds"], verbose=False)]
        feval = cindex_eval if config["task"] == "survival_cox" else None
    t0 = time.perf_counter()
    booster = lgb.train(params, train_set, num_boost_round=config["n_estimators"], valid_sets=valid_sets,
                        feval=feval, callbacks=callbacks)
    seconds = time.perf_counter() - t0
    metrics = {"rows": len(label), "train_seconds": seconds, "best_iteration": int(booster.best_iteration),
               "num_trees": int(booster.num_trees()), "world_size": ctx.get_world_size()}
    with tempfile.TemporaryDirectory(prefix="mmray-lgbm-") as tmp:
        ckpt = None
        if ctx.get_world_rank() == 0:
            booster.save_model(str(Path(tmp) / "model.txt"), num_iteration=booster.best_iteration or None)
            (Path(tmp) / "meta.json").write_text(json.dumps(metrics))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def fit_heec(heec: HEEC, X: pd.DataFrame, *, time_days=None, event=None, y=None, X_val: pd.DataFrame | None = None,
             time_days_val=None, event_val=None, y_val=None, executor: str = "ray_train", workers: int = 2,
             run_dir: str | Path | None = None, threads_per_worker: int = 1, max_failures: int = 1) -> dict:
    """Fit ``heec`` (screening on ``X`` only) with Ray Train's LightGBM (or in-process); returns run info."""
    if executor == "local":
        t0 = time.perf_counter()
        heec.params["num_threads"] = threads_per_worker
        heec.fit(X, time_days=time_days, event=event, y=y, X_val=X_val, time_days_val=time_days_val,
                 event_val=event_val, y_val=y_val)
        return {"executor": "local", "seconds": time.perf_counter() - t0,
                "best_iteration": int(heec.booster_.best_iteration)}
    import lightgbm as lgb
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.lightgbm import LightGBMTrainer

    if run_dir is None:
        raise DataError("fit_heec with executor='ray_train' needs run_dir (where Ray Train keeps the run)")
    t0 = time.perf_counter()
    heec.screen_columns(X, time_days=time_days, event=event, y=y)
    train = _frame(heec, X, heec.label(time_days=time_days, event=event, y=y))
    extra = (-len(train)) % workers  # equal shards: pad with zero-weight rows instead of dropping patients
    train["_weight"] = 1.0
    if extra:
        pad = train.sample(n=extra, replace=True, random_state=0).assign(_weight=0.0)
        train = pd.concat([train, pad], ignore_index=True)
    datasets = {"train": ray.data.from_pandas(train)}
    if X_val is not None:
        datasets["valid"] = ray.data.from_pandas(_frame(heec, X_val, heec.label(time_days=time_days_val,
                                                                                 event=event_val, y=y_val)))
    run_dir = Path(run_dir).resolve()
    from mmray.train.ray_torch import poll_reports_fast

    poll_reports_fast()
    trainer = LightGBMTrainer(
        heec_worker,
        train_loop_config={"params": heec.params, "feature_names": feature_names(heec), "task": heec.task,
                           "n_estimators": heec.n_estimators, "early_stopping_rounds": heec.early_stopping_rounds,
                           "has_valid": X_val is not None, "threads": threads_per_worker},
        scaling_config=ScalingConfig(num_workers=workers),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.parent),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)))
    try:
        result = trainer.fit()
    except Exception as e:
        raise DataError(f"Ray Train LightGBM run {run_dir} failed: {e}") from e
    with result.checkpoint.as_directory() as d:
        heec.booster_ = lgb.Booster(model_file=str(Path(d) / "model.txt"))
        local = run_dir / "final_checkpoint"
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(d, local)
    return {"executor": "ray_train", "seconds": time.perf_counter() - t0, **dict(result.metrics or {})}
