"""The ``mmray tune`` job config (``ray_jobs/configs/tune.yaml``) as frozen dataclasses.

``spaces`` holds search spaces per model name; a model without an entry (or
a hyperparameter left out of its entry while ``extend_defaults`` is true)
gets the range :func:`mmray.models.registry.describe` suggests.  Training
settings (``train``, ``lgbm``, ``preprocess``, ``folds``) are those of
``mmray train``, so the refitted best config is cross-validated exactly the
way every other model is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmray.train.config import (
    FoldsConfig,
    LgbmConfig,
    MlflowConfig,
    PreprocessConfig,
    TaskName,
    TorchTrainConfig,
)


@dataclass(frozen=True)
class SpaceParam:
    """One searched hyperparameter: ``float`` / ``int`` in ``[low, high]`` (``log``), or ``choice``."""

    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def validate(self):
        if self.kind == "choice" and not self.choices:
            yield ("choices", "a choice needs at least one value")
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                yield ("low", f"{self.kind} needs low <= high, got low={self.low}, high={self.high}")
            elif self.log and self.low <= 0:
                yield ("low", f"a log range needs low > 0, got {self.low}")


@dataclass(frozen=True)
class SearchConfig:
    algorithm: Literal["optuna", "random"] = "optuna"
    num_samples: int = 20
    max_concurrent: int = 2
    seed: int = 0
    extend_defaults: bool = True  # search describe()'s ranges for hyperparameters a space leaves out
    train_params: tuple[str, ...] = ("lr", "weight_decay", "batch_size")  # torch optimiser settings searched too

    def validate(self):
        if self.num_samples < 1:
            yield ("num_samples", f"must be >= 1, got {self.num_samples}")
        if self.max_concurrent < 1:
            yield ("max_concurrent", f"must be >= 1, got {self.max_concurrent}")


@dataclass(frozen=True)
class SchedulerConfig:
    """ASHA on the per-epoch fold-mean score (torch) or the running fold mean (LightGBM, one step per fold)."""

    kind: Literal["asha", "fifo"] = "asha"
    grace_period: int = 5
    reduction_factor: float = 3.0
    max_t: int | None = None  # default: train.max_epochs (torch) or folds.n_folds (heec)

    def validate(self):
        if self.grace_period < 1:
            yield ("grace_period", f"must be >= 1, got {self.grace_period}")
        if self.reduction_factor <= 1:
            yield ("reduction_factor", f"must be > 1, got {self.reduction_factor}")


@dataclass(frozen=True)
class TuneJobConfig:
    store: str
    model: str = "early_fusion"
    task: TaskName = "survival_cox"
    modalities: tuple[str, ...] = ("clinical", "expression", "mutations_cnv", "radiomics")
    labels_group: str = "labels"
    spaces: dict[str, dict[str, SpaceParam]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)  # hyperparameters held fixed
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    train: TorchTrainConfig = field(default_factory=lambda: TorchTrainConfig(executor="local"))
    lgbm: LgbmConfig = field(default_factory=lambda: LgbmConfig(executor="local"))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    trial_cpus: float = 1.0
    refit: bool = True  # cross-validate the best config again (mmray train) and fit it on every patient
    refit_executor: Literal["ray_train", "local"] = "ray_train"
    n_boot: int = 200
    seed: int = 0
    run_name: str | None = None  # default tune-<model>-<UTC time>
    output: str | None = None  # default <store>/_results/<run_name>
    workdir: str | None = None  # Ray Tune experiment folder; default <output>/tune (local) or ./mmray_work/<run>
    tile_group: str = "wsi_tiles"
    max_tiles: int | None = 4096
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="mmray-tune"))

    def validate(self):
        from mmray.models.registry import MODELS

        if self.model not in MODELS:
            yield ("model", f"unknown model {self.model!r}; valid: {', '.join(sorted(MODELS))}")
        for name in self.spaces:
            if name not in MODELS:
                yield (f"spaces.{name}", f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
        if self.folds.n_folds < 2:
            yield ("folds.n_folds", f"must be >= 2, got {self.folds.n_folds}")
        if self.model in ("coxnet", "coxph_ridge", "rsf", "gbsa", "ensemble") and self.task != "survival_cox":
            yield ("task", f"{self.model} supports survival_cox only")
        if self.model == "heec" and self.task == "survival_discrete":
            yield ("task", "heec supports survival_cox and subtype")
