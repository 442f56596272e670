"""Model registry: build any model by name, and describe hyperparameters for tuners.

>>> model = build_model("attention_fusion", task="survival_cox",
...                     modality_dims={"clinical": 8, "expression": 200}, n_out=1)

Torch models take a :class:`~mmray.models.batch.Batch`; ``heec`` is a
LightGBM model with ``fit``/``predict`` on DataFrames; the ``sksurv``
families (``coxnet``, ``coxph_ridge``, ``rsf``, ``gbsa``) and ``ensemble``
(stacking of them, :mod:`mmray.train.ensemble`) fit on the fold-fitted
feature matrix (``framework`` in :func:`describe` says which).  Defaults are chosen for small cohorts
(hundreds of patients): small hidden sizes, dropout 0.2-0.3, and the
suggested AdamW weight decay in each spec's ``train`` defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmray.errors import DataError, UnknownNameError
from mmray.models.fusion import AttentionFusion, EarlyFusion, LateFusion, SingleModality
from mmray.models.heec import HEEC
from mmray.models.hipt import HIPT
from mmray.models.hetero_gnn import HeteroGNN
from mmray.models.losses import TASKS
from mmray.models.mm_gnn import MMGNN
from mmray.models.porpoise import Porpoise
from mmray.models.survival_classic import GBSA, RSF, Coxnet, CoxPHRidge


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default and a suggested search range.

    ``kind``: ``"float"``, ``"int"``, ``"choice"`` or ``"fixed"``; ``log``
    for log-uniform ranges.
    """

    default: Any
    kind: str = "fixed"
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    log: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]
    framework: str  # "torch" or "lightgbm"
    tasks: tuple[str, ...]
    needs_bag: bool
    summary: str
    hparams: dict[str, HParam] = field(default_factory=dict)
    extra: tuple[str, ...] = ()  # accepted keywords that are not searched (seeds, threads)
    bag_group: str | None = None  # MIL models reading another bag group than the job's tile_group


_DROPOUT = HParam(0.3, "float", 0.0, 0.5)
# Optimiser defaults every torch model shares (the Ray loop reads these).
TRAIN_DEFAULTS: dict[str, HParam] = {
    "lr": HParam(1e-3, "float", 1e-4, 1e-2, log=True),
    "weight_decay": HParam(1e-3, "float", 1e-5, 1e-1, log=True),
    "batch_size": HParam(64, "choice", choices=(32, 64, 128)),
    "max_epochs": HParam(60, "int", 20, 200),
    "patience": HParam(10, "int", 5, 20),
}
_TORCH_TASKS = TASKS
_SURV = ("survival_cox",)


class _EnsembleBuilder:
    """``build_model("ensemble", ...)`` -> :class:`mmray.train.ensemble.StackedEnsemble` (same keywords).

    Imported when built: the ensemble fits training-code pipelines, which models/ must not import.
    """

    def __new__(cls, **kwargs):
        from mmray.train.ensemble import StackedEnsemble

        return StackedEnsemble(**kwargs)

    def __init__(self, *, modalities=(), members=None, method="stack", meta_alpha=1.0, inner_folds=3,
                 member_hparams=None, seed=0):  # the signature the registry checks; never runs
        raise AssertionError("unreachable")


# Classical survival families (scikit-survival), fitted on the fold-fitted matrix by mmray.train.fold_classic.
_CLASSIC_SPECS = (
    ModelSpec("coxnet", Coxnet, "sksurv", _SURV, False,
              "elastic-net Cox (scikit-survival Coxnet), alpha by inner CV on the training fold",
              {"l1_ratio": HParam(0.5, "float", 0.05, 1.0), "n_alphas": HParam(30),
               "alpha_min_ratio": HParam(0.02, "float", 0.001, 0.2, log=True), "inner_folds": HParam(3)},
              extra=("seed",)),
    ModelSpec("coxph_ridge", CoxPHRidge, "sksurv", _SURV, False,
              "Cox proportional hazards with a ridge penalty",
              {"alpha": HParam(10.0, "float", 0.01, 1000.0, log=True)}, extra=("ties", "n_iter")),
    ModelSpec("rsf", RSF, "sksurv", _SURV, False, "random survival forest (scikit-survival)",
              {"n_estimators": HParam(200, "int", 50, 500), "min_samples_leaf": HParam(8, "int", 3, 30),
               "max_features": HParam(0.5, "float", 0.1, 1.0), "max_depth": HParam(None)},
              extra=("seed", "n_jobs")),
    ModelSpec("gbsa", GBSA, "sksurv", _SURV, False,
              "gradient-boosted Cox model on regression trees (scikit-survival)",
              {"n_estimators": HParam(150, "int", 50, 500), "learning_rate": HParam(0.05, "float", 0.01, 0.3, log=True),
               "max_depth": HParam(2, "int", 1, 4), "subsample": HParam(0.8, "float", 0.5, 1.0),
               "min_samples_leaf": HParam(8, "int", 3, 30), "dropout_rate": HParam(0.0, "float", 0.0, 0.3)},
              extra=("seed",)),
    ModelSpec("ensemble", _EnsembleBuilder, "sksurv", _SURV, False,
              "nested stacking (Cox meta-learner on inner out-of-fold risks) or rank average of classical members",
              {"method": HParam("stack", "choice", choices=("stack", "rank")),
               "meta_alpha": HParam(1.0, "float", 0.01, 100.0, log=True), "inner_folds": HParam(3),
               "members": HParam(None)},
              extra=("seed", "member_hparams")),
)

MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("single", SingleModality, "torch", _TORCH_TASKS, False,
              "MLP on one modality (pass modality=...); the single-modality baseline",
              {"modality": HParam(None), "hidden": HParam((32,), "choice", choices=((16,), (32,), (64,), (64, 32))),
               "dropout": _DROPOUT}),
    ModelSpec("early_fusion", EarlyFusion, "torch", _TORCH_TASKS, False,
              "per-modality encoders, concatenation with the mask, MLP",
              {"enc_dim": HParam(32, "choice", choices=(16, 32, 64)),
               "hidden": HParam((64,), "choice", choices=((32,), (64,), (64, 32))),
               "dropout": _DROPOUT, "modality_dropout": HParam(0.0, "float", 0.0, 0.4)}),
    ModelSpec("late_fusion", LateFusion, "torch", _TORCH_TASKS, False,
              "per-modality heads, learned weights renormalised over present modalities",
              {"hidden": HParam((32,), "choice", choices=((16,), (32,), (64,))),
               "dropout": _DROPOUT, "modality_dropout": HParam(0.0, "float", 0.0, 0.4)}),
    ModelSpec("attention_fusion", AttentionFusion, "torch", _TORCH_TASKS, False,
              "modality tokens + embeddings, transformer with key padding for missing ones, modality dropout",
              {"dim": HParam(32, "choice", choices=(16, 32, 64)), "n_heads": HParam(2, "choice", choices=(1, 2, 4)),
               "n_layers": HParam(1, "int", 1, 2), "dropout": HParam(0.2, "float", 0.0, 0.5),
               "modality_dropout": HParam(0.2, "float", 0.0, 0.5)}),
    ModelSpec("porpoise", Porpoise, "torch", _TORCH_TASKS, True,
              "gated attention-MIL over tiles x SNN over omics, gated Kronecker fusion, unimodal fallbacks",
              {"path_dim": HParam(32, "choice", choices=(16, 32, 64)),
               "omic_dim": HParam(32, "choice", choices=(16, 32, 64)),
               "omic_layers": HParam(2, "int", 1, 3), "fusion_dim": HParam(32, "choice", choices=(16, 32, 64)),
               "dropout": HParam(0.25, "float", 0.0, 0.5)}),
    ModelSpec("hipt", HIPT, "torch", _TORCH_TASKS, True,
              "HIPT: 4096-px region vectors (wsi_regions_hipt) -> transformer -> gated attention pooling; slide-only",
              {"dim": HParam(192, "choice", choices=(64, 128, 192)), "n_layers": HParam(2, "int", 1, 3),
               "n_heads": HParam(3, "choice", choices=(1, 2, 3, 4)), "dropout": HParam(0.25, "float", 0.0, 0.5)},
              bag_group="wsi_regions_hipt"),
    ModelSpec("hetero_gnn", HeteroGNN, "torch", _TORCH_TASKS, False,
              "patient-gene graph: genes linked by expression / alterations, GAT gene -> patient, patient readout",
              {"dim": HParam(32, "choice", choices=(16, 32, 64)), "n_layers": HParam(1, "int", 1, 3),
               "n_heads": HParam(2, "choice", choices=(1, 2, 4)), "dropout": HParam(0.2, "float", 0.0, 0.5)}),
    ModelSpec("mm_gnn", MMGNN, "torch", _TORCH_TASKS, False,
              "multi-modal heterogeneous GNN: gene/protein/clinical/imaging feature nodes, prior-knowledge and "
              "fold-fitted correlation edges, GAT stacks, patient->modality cross-attention + transformer, "
              "multi-task heads (uncertainty weighting), optional graph contrastive pretraining",
              {"dim": HParam(32, "choice", choices=(16, 32, 64)), "n_heads": HParam(2, "choice", choices=(1, 2, 4)),
               "intra_layers": HParam(2, "int", 0, 3), "fusion": HParam("cross_attention", "choice",
                                                                         choices=("cross_attention", "mean")),
               "fusion_layers": HParam(1, "int", 0, 2), "dropout": HParam(0.2, "float", 0.0, 0.5),
               "modality_dropout": HParam(0.1, "float", 0.0, 0.4), "tasks": HParam(()),
               "task_weighting": HParam("uncertainty", "choice", choices=("uncertainty", "equal")),
               "pretrain_epochs": HParam(0, "int", 0, 40), "temperature": HParam(0.1),
               "edge_drop": HParam(0.2, "float", 0.0, 0.5), "feature_noise": HParam(0.1, "float", 0.0, 0.5),
               "corr_threshold": HParam(0.5, "float", 0.3, 0.8), "corr_top_k": HParam(2, "int", 1, 8),
               "min_prior_score": HParam(0.4, "float", 0.0, 0.9)},
              extra=("graph", "task_dims", "pretrain_lr")),
    ModelSpec("heec", HEEC, "lightgbm", ("survival_cox", "subtype"), False,
              "LightGBM on extremum slide features + fold-screened genomics (Cox objective for survival)",
              {"screen_alpha": HParam(0.05, "float", 0.001, 0.2, log=True),
               "max_genomic": HParam(200, "int", 20, 1000, log=True),
               "max_per_group": HParam(64, "int", 8, 512, log=True),
               "n_estimators": HParam(300, "int", 100, 1000),
               "learning_rate": HParam(0.03, "float", 0.005, 0.2, log=True),
               "num_leaves": HParam(7, "int", 3, 31), "min_child_samples": HParam(10, "int", 5, 40),
               "feature_fraction": HParam(0.5, "float", 0.2, 1.0),
               "bagging_fraction": HParam(0.8, "float", 0.5, 1.0),
               "lambda_l2": HParam(1.0, "float", 1e-3, 10.0, log=True)},
              extra=("seed", "num_threads", "early_stopping_rounds", "genomic_prefixes", "screened_groups")),
    *_CLASSIC_SPECS,
)}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, list(MODELS)) from None


def build_model(name: str, *, task: str, modality_dims: Mapping[str, int], n_out: int,
                bag_dim: int | None = None, **hparams):
    """A fresh model ``name`` for ``task`` over ``modality_dims`` (tabular widths), ``n_out`` outputs.

    ``n_out``: 1 for ``survival_cox``, the number of time bins for
    ``survival_discrete``, of classes for ``subtype``.  Unknown
    hyperparameters are an error that lists the valid ones.  For ``heec``,
    ``modality_dims``/``bag_dim`` are ignored (it reads DataFrame columns)
    and ``n_out`` is the number of classes for subtype.
    """
    spec = get_spec(name)
    if task not in TASKS:
        raise UnknownNameError("task", task, TASKS)
    if task not in spec.tasks:
        raise DataError(f"model {name!r} supports tasks {list(spec.tasks)}, not {task!r}")
    if spec.needs_bag and not bag_dim:
        raise DataError(f"model {name!r} needs tile bags: pass bag_dim")
    valid = set(spec.hparams) | set(spec.extra)
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise DataError(f"model {name!r} has no hyperparameter(s) {unknown}; valid: {sorted(valid)}")
    if spec.framework == "lightgbm":
        return spec.builder(task=task, n_classes=n_out if task == "subtype" else None, **hparams)
    if spec.framework == "sksurv":  # matrix models: modality_dims / n_out do not apply
        return spec.builder(**hparams)
    kwargs = dict(hparams)
    for k, hp in spec.hparams.items():
        kwargs.setdefault(k, hp.default)
    if name == "single" and kwargs.get("modality") is None:
        kwargs.pop("modality")
    return spec.builder(task=task, modality_dims=dict(modality_dims), n_out=n_out, bag_dim=bag_dim, **kwargs)


def describe() -> dict[str, dict]:
    """Every model's framework, tasks, needs, summary, hyperparameters (default + search range)."""
    out = {}
    for name, spec in MODELS.items():
        out[name] = {
            "framework": spec.framework, "tasks": list(spec.tasks), "needs_bag": spec.needs_bag,
            "summary": spec.summary,
            "hparams": {k: vars(hp).copy() for k, hp in spec.hparams.items()},
            "train": {k: vars(hp).copy() for k, hp in TRAIN_DEFAULTS.items()} if spec.framework == "torch" else {},
        }
    return out


def _check_registry() -> None:
    """Every declared hyperparameter is a real keyword of its builder (import-time guard)."""
    for spec in MODELS.values():
        params = inspect.signature(spec.builder.__init__).parameters
        missing = (set(spec.hparams) | set(spec.extra)) - set(params)
        if missing:
            raise RuntimeError(f"registry: {spec.name} declares unknown hyperparameters {sorted(missing)}")


_check_registry()
