"""The ``mmray train`` job config (``ray_jobs/configs/train.yaml``) as frozen dataclasses.

Everything ``key=value``-overridable: ``train.workers=2``, ``folds.n_folds=3``,
``tasks=[survival_cox,subtype]``.  ``models`` is a list of entries, each a
model name from :mod:`mmray.models.registry`, the modality sets it runs on
(names from ``modality_sets``; empty = every set it can take: ``single`` the
one-modality sets, fusion models the multi-modality sets, ``heec`` all sets,
``porpoise`` the sets with ``tiles``, ``hipt`` the set that is only ``tiles``, the classical survival families and
``ensemble`` all sets without tiles) and hyperparameter overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmray.models.batch import ALL_MODALITIES, BAG

CLASSIC_SET = ("coxnet", "coxph_ridge", "rsf", "gbsa", "ensemble")  # classical families: every set without tiles

DEFAULT_SETS: dict[str, tuple[str, ...]] = {
    "clinical": ("clinical",), "expression": ("expression",), "mutations_cnv": ("mutations_cnv",),
    "radiomics": ("radiomics",), "ct_deep": ("ct_deep",), "slide": ("slide",), "proteins": ("proteins",),
    "omics": ("expression", "mutations_cnv"), "ct": ("radiomics", "ct_deep"),
    "tabular": ("clinical", "expression", "mutations_cnv", "radiomics"),
    "all": ("clinical", "expression", "mutations_cnv", "radiomics", "slide"),
}
TASK_NAMES = ("survival_cox", "survival_discrete", "subtype")
TaskName = Literal["survival_cox", "survival_discrete", "subtype"]


@dataclass(frozen=True)
class FoldsConfig:
    n_folds: int = 5
    seed: int = 0
    repeats: int = 1  # repeated CV (e.g. 5 x 5-fold); repeat r uses seed mmray.train.folds.repeat_seed(seed, r)


@dataclass(frozen=True)
class TorchTrainConfig:
    """Torch models on Ray Train (``executor: local`` runs the same loop in the driver, no workers)."""

    executor: Literal["ray_train", "local"] = "ray_train"
    workers: int = 1  # DDP workers per fit
    use_gpu: bool = False
    threads_per_worker: int = 1
    max_failures: int = 1  # worker-group restarts from the latest checkpoint
    keep_checkpoints: int = 2
    max_epochs: int = 60
    patience: int = 10  # epochs without a better validation C-index / AUC
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    val_fraction: float = 0.2  # inner validation split of each training fold
    grad_clip: float = 5.0
    ties: Literal["efron", "breslow"] = "efron"
    n_bins: int = 4  # survival_discrete time bins (event-time quantiles of the training rows)
    class_weights: Literal["balanced", "none"] = "balanced"
    fail_at_epoch: int | None = None  # failure drill: one worker raises once at this epoch

    def validate(self):
        for name in ("workers", "threads_per_worker", "max_epochs", "patience", "batch_size", "n_bins"):
            if getattr(self, name) < 1:
                yield (name, f"must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 0.5:
            yield ("val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        if self.lr <= 0:
            yield ("lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class LgbmConfig:
    executor: Literal["ray_train", "local"] = "ray_train"
    workers: int = 2  # Ray Train LightGBM workers (data-parallel)

    def validate(self):
        if self.workers < 1:
            yield ("workers", f"must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class PreprocessConfig:
    """Fold-fitted preprocessing per modality (see :mod:`mmray.train.preprocess`).

    ``top_k_var``: keep the k most variable columns (label-free);
    ``screen``: univariate label screening (Cox score test / ANOVA) on the
    training rows, ``{max_p, top_k}``; ``pca``: k whitened principal components
    (label-free), for learned embeddings such as ``ct_deep``.  Defaults suit
    cohorts of 100-1000 patients with thousands of genes: a network sees tens
    of genes, not thousands, per modality.
    """

    top_k_var: dict[str, int] = field(default_factory=lambda: {"expression": 2000, "mutations_cnv": 1000,
                                                                "slide": 1000})
    screen: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "expression": {"max_p": 0.05, "top_k": 32}, "mutations_cnv": {"max_p": 0.05, "top_k": 16},
        "slide": {"max_p": 0.05, "top_k": 32}})
    pca: dict[str, int] = field(default_factory=lambda: {"ct_deep": 8})

    def validate(self):
        for m, k in self.pca.items():
            if k < 1:
                yield (f"pca.{m}", f"must be at least 1 component, got {k}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    sets: tuple[str, ...] = ()
    hparams: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # the name in the results (default: name); two entries of one model need two labels
    preprocess: dict[str, Any] = field(default_factory=dict)  # {top_k_var: {...}, screen: {...}} over the job's
    ablation: bool = False  # also run the entry without each of its components (mmray.train.gnn_ablation)

    def validate(self):
        bad = sorted(set(self.preprocess) - {"top_k_var", "screen"})
        if bad:
            yield ("preprocess", f"unknown key(s) {bad}; an entry may override top_k_var and screen")


@dataclass(frozen=True)
class InterpretConfig:
    """Interpretation of every fusion model's held-out folds (mmray.train.interpret)."""

    enabled: bool = True
    ig_steps: int = 24  # integrated-gradients steps (0: no gene attributions)
    top_k: int = 50  # genes ranked, compared across folds and tested for enrichment
    models: tuple[str, ...] = ()  # labels to interpret; empty: every torch fusion model

    def validate(self):
        if self.ig_steps < 0 or self.top_k < 1:
            yield ("", f"ig_steps must be >= 0 and top_k >= 1, got {self.ig_steps} and {self.top_k}")


@dataclass(frozen=True)
class MlflowConfig:
    """MLflow tracking: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<store>/_mlflow/mlflow.db``."""

    enabled: bool = True
    tracking_uri: str | None = None
    workdir: str | None = None
    experiment: str = "mmray-train"


@dataclass(frozen=True)
class TrainJobConfig:
    store: str
    labels_group: str = "labels"
    tasks: tuple[TaskName, ...] = ("survival_cox",)
    modality_sets: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SETS))
    models: tuple[ModelEntry, ...] = (ModelEntry("single"), ModelEntry("early_fusion"), ModelEntry("heec"))
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    train: TorchTrainConfig = field(default_factory=TorchTrainConfig)
    lgbm: LgbmConfig = field(default_factory=LgbmConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    n_boot: int = 200  # bootstrap resamples for the CI of each fold-mean headline metric
    seed: int = 0
    run_name: str | None = None  # default: train-<UTC time>
    output: str | None = None  # default: <store>/_results/<run_name>
    workdir: str | None = None  # Ray Train run folders; default <output>/runs (local) or ./mmray_work/<run>
    tile_group: str = "wsi_tiles"
    max_tiles: int | None = 4096
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    interpret: InterpretConfig = field(default_factory=InterpretConfig)

    def validate(self):
        from mmray.models.registry import MODELS

        if not self.tasks:
            yield ("tasks", "give at least one task")
        for name, mods in self.modality_sets.items():
            bad = [m for m in mods if m not in ALL_MODALITIES]
            if bad or not mods:
                yield (f"modality_sets.{name}", f"modalities must be among {list(ALL_MODALITIES)}, got {list(mods)}")
        for i, e in enumerate(self.models):
            if e.name not in MODELS:
                yield (f"models[{i}].name", f"unknown model {e.name!r}; valid: {', '.join(sorted(MODELS))}")
            for s in e.sets:
                if s not in self.modality_sets:
                    yield (f"models[{i}].sets", f"unknown modality set {s!r}; defined: {', '.join(self.modality_sets)}")
        if self.folds.n_folds < 2:
            yield ("folds.n_folds", f"must be >= 2, got {self.folds.n_folds}")
        if self.folds.repeats < 1:
            yield ("folds.repeats", f"must be >= 1, got {self.folds.repeats}")


def sets_for(entry: ModelEntry, modality_sets: dict[str, tuple[str, ...]]) -> list[str]:
    """The modality sets ``entry`` runs on (its own list, or every set its model can take)."""
    def fits(mods: tuple[str, ...]) -> bool:
        has_bag = BAG in mods
        if entry.name == "porpoise":
            return has_bag and len(mods) >= 2
        if entry.name == "hipt":  # slide-only: region bags
            return tuple(mods) == (BAG,)
        if has_bag:
            return False
        if entry.name == "single":
            return len(mods) == 1
        if entry.name == "heec" or entry.name in CLASSIC_SET:
            return True
        return len(mods) >= 2
    if entry.sets:
        return list(entry.sets)
    return [s for s, mods in modality_sets.items() if fits(tuple(mods))]
