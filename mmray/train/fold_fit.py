"""One (model, modality set, fold) fit: split, fold-fitted preprocessing, Ray Train fit, held-out scores.

The test fold comes from the saved folds; the training fold is split again
(:func:`mmray.train.folds.inner_split`) into *fit* rows, on which every
fitted transform (imputation, variance filter, label screening, scaling,
time bins, class weights, HEEC's genomics screen) learns, and *val* rows for
early stopping.  The test fold is touched only by ``transform`` and
``predict``.  Torch models train through :func:`mmray.train.ray_torch.fit_torch`,
HEEC through :func:`mmray.train.ray_lgbm.fit_heec`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.models.batch import BAG
from mmray.models.losses import TimeBins, balanced_class_weights
from mmray.train import data as D
from mmray.train.attention import tile_attention
from mmray.train.evaluate import FoldScore, risk_of, score_subtype, score_survival, softmax
from mmray.train.fold_extras_out import add_fold_extras
from mmray.train.folds import inner_split, split
from mmray.train.gnn_fold import fold_extras
from mmray.train.preprocess import ModalityLayout, Preprocessor
from mmray.train.ray_torch import TorchSpec, fit_torch, predict_columns


@dataclass(frozen=True)
class FoldSettings:
    """Training settings a fold fit needs (a flat view of the job config)."""

    executor: str = "ray_train"
    workers: int = 1
    use_gpu: bool = False
    threads_per_worker: int = 1
    max_failures: int = 1
    keep_checkpoints: int = 2
    max_epochs: int = 60
    patience: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    val_fraction: float = 0.2
    grad_clip: float = 5.0
    ties: str = "efron"
    n_bins: int = 4
    class_weights: str = "balanced"
    fail_at_epoch: int | None = None
    lgbm_executor: str = "ray_train"
    lgbm_workers: int = 2
    top_k_var: Mapping[str, int] = field(default_factory=dict)
    screen: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    pca: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    tile_group: str = D.TILE_GROUP
    store: str | None = None
    max_tiles: int | None = 4096
    interpret: Mapping | None = None  # mmray.train.config.InterpretConfig as a dict; None: no interpretation


@dataclass
class FoldOutcome:
    metrics: dict[str, float]
    predictions: pd.DataFrame  # patient_id, fold, output columns, labels
    info: dict = field(default_factory=dict)  # best_epoch, seconds, n_train, ...
    importances: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    attention: pd.DataFrame | None = None  # MIL models: per-tile attention on the test fold (slide heatmaps)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # more per-fold tables (graph edges,
    # gene / modality importance): written as <name>.parquet with the run's results


@dataclass
class FoldRows:
    fit: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    @property
    def train(self) -> pd.DataFrame:
        return pd.concat([self.fit, self.val])


def fold_rows(table: pd.DataFrame, folds: pd.DataFrame, *, fold: int, val_fraction: float, seed: int) -> FoldRows:
    tr, te = split(table, folds, fold=fold)
    train = table.iloc[tr]
    fi, vi = inner_split(train, val_fraction=val_fraction, seed=seed + 7 * fold)
    return FoldRows(fit=train.iloc[fi], val=train.iloc[vi], test=table.iloc[te])


def _class_index(rows: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return rows["subtype"].astype(str).map(index).to_numpy(np.int64)


def _predictions(task: str, ids, output: np.ndarray, rows: pd.DataFrame, fold: int,
                 classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Held-out outputs with labels: ``risk`` (survival; discrete-time: ``-sum S_k``) and ``out_<j>`` (hazard
    logits or class probabilities), ``time_days``, ``event``, ``subtype`` and its class index ``y``."""
    out = pd.DataFrame({"patient_id": list(ids), "fold": fold})
    o = np.asarray(output, float)
    if task != "subtype":
        out["risk"] = risk_of(task, o)
    if o.ndim == 2:
        for j in range(o.shape[1]):
            out[f"out_{j}"] = o[:, j]
    lab = rows.drop_duplicates("patient_id").set_index("patient_id")
    for c in ("time_days", "event", "subtype"):
        if c in lab.columns:
            out[c] = out["patient_id"].map(lab[c]).to_numpy()
    if task == "subtype" and classes is not None:
        out["y"] = out["subtype"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    return out


@dataclass
class TorchFold:
    """A fold made ready for a torch model: fitted preprocessing, the spec, per-split column dicts/sources."""

    pre: Preprocessor
    prepared: dict  # split -> Prepared (fit, val, test, train)
    spec: TorchSpec
    cols: dict  # split -> column dict (fit padded to the worker count)
    tiles: dict | None
    bins: TimeBins | None
    extras: object = None  # mmray.train.gnn_fold.FoldExtras: fold graph, auxiliary tasks (mm_gnn, multi-task)

    def source(self, split: str):
        """Column dict, or a Ray Dataset reading tile bags as it streams (MIL models)."""
        return self.cols[split] if self.tiles is None else D.to_dataset(self.cols[split], tiles=self.tiles)


def _screen_kwargs(v: Mapping) -> dict:
    """CorrelationFilter keywords from a config mapping (``top_k`` as an int)."""
    return {k: (int(x) if k == "top_k" and x is not None else x) for k, x in dict(v).items()}


def prepare_torch_fold(*, model: str, hparams: Mapping, task: str, modalities: Sequence[str], rows: FoldRows,
                       fold: int, classes: Sequence[str] | None, settings: FoldSettings,
                       layout: ModalityLayout | None = None) -> TorchFold:
    """Fit the fold's preprocessing (fit rows only), time bins / class weights, and build the spec."""
    s = settings
    tab = [m for m in modalities if m != BAG]
    pre = Preprocessor(layout, task=task, modalities=tab, top_k_var={m: k for m, k in s.top_k_var.items() if m in tab},
                       screen={m: _screen_kwargs(v) for m, v in s.screen.items() if m in tab},
                       subtype_classes=classes, pca={m: k for m, k in s.pca.items() if m in tab})
    pre.fit(rows.fit)
    P = {k: pre.transform(getattr(rows, k)) for k in ("fit", "val", "test", "train")}
    n_out, bins, cw = 1, None, None
    if task == "survival_discrete":
        bins = TimeBins.fit(P["fit"].time_days, P["fit"].event, s.n_bins)
        n_out = bins.n_bins
    elif task == "subtype":
        n_out = len(pre.subtype_classes)
        if s.class_weights == "balanced":
            cw = balanced_class_weights(P["fit"].subtype, n_out).tolist()
    tiles = bag_dim = None
    bag = {k: None for k in P}
    if BAG in modalities:
        group = bag_group_of(model, s.tile_group)
        tiles = {"store": s.store, "group": group, "max_tiles": s.max_tiles, "seed": s.seed}
        bag = {k: D.bag_ids_of(getattr(rows, k), group) for k in P}
        bag_dim = tile_dim(s.store, group)
    extras = fold_extras(model=model, hparams=hparams, task=task, pre=pre, prepared=P, rows=rows, store=s.store)
    spec = TorchSpec(model=model, task=task, modality_dims=pre.dims, n_out=n_out, bag_dim=bag_dim,
                     hparams={**dict(hparams), **(extras.hparams if extras else {})}, lr=s.lr, weight_decay=s.weight_decay, batch_size=s.batch_size,
                     max_epochs=s.max_epochs, patience=s.patience, seed=s.seed + 1000 * fold, grad_clip=s.grad_clip,
                     ties=s.ties, bins=bins.to_dict() if bins else None, class_weights=cw,
                     fail_at_epoch=s.fail_at_epoch)
    cols = {k: D.prepared_columns(P[k], bag_ids=bag[k], pad_to_multiple=s.workers if k == "fit" else 1,
                                  seed=s.seed, extra=extras.columns.get(k) if extras else None) for k in P}
    return TorchFold(pre, P, spec, cols, tiles, bins, extras)


def score_torch(tf: TorchFold, model, rows: FoldRows, fold: int) -> tuple[FoldScore, pd.DataFrame]:
    """Held-out scores of a fitted torch model (Breslow baseline from the training fold)."""
    P, task = tf.prepared, tf.spec.task
    # MIL: a prediction batch holds its patients' tile samples, so it is no larger than a training batch
    batch = tf.spec.batch_size if tf.tiles is not None else 256
    pred = {k: predict_columns(model, tf.source(k), dims=tf.pre.dims, bag_dim=tf.spec.bag_dim, batch_size=batch)
            for k in (("test",) if task == "subtype" else ("test", "train"))}
    test = _align(pred["test"], P["test"].patient_ids)
    if task == "subtype":
        output = softmax(test)
        score = score_subtype(output, y_true=P["test"].subtype)
    else:
        output = test
        score = score_survival(task, test, time_days=P["test"].time_days, event=P["test"].event,
                               train_output=_align(pred["train"], P["train"].patient_ids),
                               train_time_days=P["train"].time_days, train_event=P["train"].event, bins=tf.bins)
    return score, _predictions(task, P["test"].patient_ids, output, rows.test, fold, tf.pre.subtype_classes)


def fit_fold_torch(*, model: str, hparams: Mapping, task: str, modalities: Sequence[str], rows: FoldRows,
                   fold: int, classes: Sequence[str] | None, settings: FoldSettings, run_dir: Path,
                   layout: ModalityLayout | None = None, label: str | None = None) -> FoldOutcome:
    """Fit a torch model on one fold (module doc) on Ray Train and score its test fold.

    ``label``: the model's name in the results (``interpret.models`` selects by it); default ``model``.
    """
    s = settings
    tf = prepare_torch_fold(model=model, hparams=hparams, task=task, modalities=modalities, rows=rows, fold=fold,
                            classes=classes, settings=s, layout=layout)
    extra_files = {"preprocess.pkl": pickle.dumps(tf.pre)}
    fit = fit_torch(tf.spec, train=tf.cols["fit"], val=tf.cols["val"], run_dir=run_dir, executor=s.executor,
                    workers=s.workers, use_gpu=s.use_gpu, max_failures=s.max_failures, keep=s.keep_checkpoints,
                    tiles=tf.tiles, extra_files=extra_files, threads_per_worker=s.threads_per_worker)
    score, preds = score_torch(tf, fit.model, rows, fold)
    info = {"best_epoch": fit.best_epoch, "best_val_score": fit.best_score, "epochs_run": len(fit.history),
            "seconds": fit.seconds, "n_fit": len(rows.fit), "n_val": len(rows.val), "n_test": len(rows.test),
            "dims": dict(tf.pre.dims), "checkpoint": fit.checkpoint}
    attention = None
    if tf.tiles is not None and hasattr(fit.model, "forward_with_attention"):
        attention = tile_attention(fit.model, tf.cols["test"], store=s.store, group=tf.tiles["group"], dims=tf.pre.dims,
                                   bag_dim=tf.spec.bag_dim, fold=fold)
    out = FoldOutcome(score.metrics, preds, info, notes=score.notes, attention=attention)
    add_fold_extras(out, tf=tf, model=fit.model, fold=fold, settings=s, history=fit.history, model_name=label or model)
    return out


def _align(pred, ids: Sequence[str]) -> np.ndarray:
    """Outputs in the order of ``ids`` (Ray Data may reorder rows)."""
    if list(pred.patient_ids) == list(ids):
        return pred.output
    pos = {p: i for i, p in enumerate(pred.patient_ids)}
    return pred.output[[pos[p] for p in ids]]


def bag_group_of(model: str, default: str) -> str:
    """The bag group a MIL model reads: its registry spec's (``hipt``: ``wsi_regions_hipt``) or the job's."""
    from mmray.models.registry import get_spec

    return get_spec(model).bag_group or default


def tile_dim(store: str | None, group: str) -> int:
    from mmray.store import FeatureStore

    if not store:
        raise DataError("a MIL model needs the store location to read tile bags")
    st = FeatureStore(store)
    first = st.bags(group)["bag_id"].iloc[0]
    emb = st.read_bag(group, first, columns=[D.TILE_COLUMN])[D.TILE_COLUMN].iloc[0]
    return len(emb)


def heec_columns(table: pd.DataFrame, modalities: Sequence[str], layout: ModalityLayout) -> list[str]:
    """The raw joined-table columns HEEC sees for a modality set (features + ``has_<group>`` flags)."""
    cols = []
    for m in modalities:
        cols += layout.columns(table, m)
        cols += [f"has_{g}" for g in layout.groups[m] if f"has_{g}" in table.columns]
    return list(dict.fromkeys(cols))


def heec_hparams(hparams: Mapping, *, n_rows: int, seed: int) -> tuple[dict, list[str]]:
    """HEEC keywords for ``n_rows`` training rows: ``min_child_samples`` capped at a quarter of them.

    A leaf minimum no split of a small fold can satisfy would make LightGBM
    drop every feature and fail; the cap is noted in the results.
    """
    from mmray.models.registry import get_spec

    hp = {"seed": seed, **dict(hparams)}
    leaf = int(hp.get("min_child_samples", get_spec("heec").hparams["min_child_samples"].default))
    if n_rows < 4 * leaf:
        hp["min_child_samples"] = max(2, n_rows // 4)
        return hp, [f"min_child_samples {leaf} -> {hp['min_child_samples']} for {n_rows} training rows"]
    return hp, []


def heec_labels(task: str, rows: pd.DataFrame, classes: Sequence[str] | None) -> dict:
    """HEEC's label keywords for ``rows``: ``y`` (class indices) or ``time_days`` + ``event``."""
    if task == "subtype":
        return {"y": _class_index(rows, classes)}
    return {"time_days": rows["time_days"].to_numpy(float), "event": rows["event"].astype(bool).to_numpy()}


def fit_fold_heec(*, hparams: Mapping, task: str, modalities: Sequence[str], rows: FoldRows, fold: int,
                  classes: Sequence[str] | None, settings: FoldSettings, run_dir: Path,
                  layout: ModalityLayout | None = None) -> FoldOutcome:
    """HEEC on one fold: screening + LightGBM on the fit rows, early stopping on val, scores on test."""
    from mmray.models.registry import build_model
    from mmray.train.ray_lgbm import fit_heec

    layout = layout or ModalityLayout()
    s = settings
    if BAG in modalities:
        raise DataError("heec reads patient-level slide features (modality 'slide'), not tile bags")
    cols = heec_columns(rows.fit, modalities, layout)
    if not cols:
        raise DataError(f"no columns for modalities {list(modalities)} in the training table")
    n_out = len(classes) if task == "subtype" else 1
    hp, notes = heec_hparams(hparams, n_rows=len(rows.fit), seed=s.seed + 1000 * fold)
    heec = build_model("heec", task=task, modality_dims={}, n_out=n_out, **hp)

    val = {f"{k}_val": v for k, v in heec_labels(task, rows.val, classes).items()}
    info = fit_heec(heec, rows.fit[cols], **heec_labels(task, rows.fit, classes), X_val=rows.val[cols], **val,
                    executor=s.lgbm_executor,
                    workers=s.lgbm_workers, run_dir=run_dir, threads_per_worker=s.threads_per_worker,
                    max_failures=s.max_failures)
    out = heec.predict(rows.test[cols])
    if task == "subtype":
        score = score_subtype(out, y_true=_class_index(rows.test, classes))
    else:
        train = rows.train
        score = score_survival("survival_cox", out, time_days=rows.test["time_days"].to_numpy(float),
                               event=rows.test["event"].astype(bool).to_numpy(),
                               train_output=heec.predict(train[cols]), train_time_days=train["time_days"].to_numpy(float),
                               train_event=train["event"].astype(bool).to_numpy())
    imp = heec.feature_importance("gain")
    imp = pd.DataFrame({"feature": imp.index, "gain": imp.to_numpy(), "rank": np.arange(1, len(imp) + 1),
                        "fold": fold})
    pvals = pd.concat([heec.genomic_p_values_, *getattr(heec, "group_p_values_", {}).values()])
    if len(pvals):
        imp["screen_p"] = imp["feature"].map(pvals).to_numpy()
    info.update({"n_fit": len(rows.fit), "n_val": len(rows.val), "n_test": len(rows.test),
                 "n_features": len(heec.features_), "n_genomic_kept": int(sum(heec._is_genomic(c) for c in heec.features_))})
    preds = _predictions(task, rows.test["patient_id"].astype(str), out, rows.test, fold, classes)
    return FoldOutcome(score.metrics, preds,
                       info, importances=imp, notes=notes + score.notes)
