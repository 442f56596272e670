"""The ``mmray federated`` job config (``ray_jobs/configs/federated.yaml``) as frozen dataclasses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mmray.registry.config import GateConfig, RegistryConfig
from mmray.train.config import FoldsConfig, MlflowConfig, PreprocessConfig

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")
FEDERATED_MODELS = ("single", "early_fusion", "late_fusion", "attention_fusion")


@dataclass(frozen=True)
class SiteConfig:
    """One institution: its own feature store, and what its Ray actor asks for.

    The actor always asks for ``resource_amount`` of the custom resource
    ``site_<name>``, which only that institution's nodes declare
    (``ray start --resources '{"site_<name>": 1}'``), so a site's rows are
    read and trained on there and nowhere else.
    """

    store: str
    cpus: float = 1.0
    resource_amount: float = 1.0


@dataclass(frozen=True)
class FailureConfig:
    """Site failure: planned drop-outs (the site refuses those rounds), random ones, and time limits."""

    drop: dict[str, tuple[int, ...]] = field(default_factory=dict)  # site -> rounds (0-based) it drops out of
    drop_prob: float = 0.0  # each sampled site drops out of a round with this probability (seeded)
    round_timeout_s: float = 600.0  # a site that has not answered by then is left out of the round
    min_sites: int = 1  # fewer answers than this: the round keeps the previous global model

    def validate(self):
        if not 0.0 <= self.drop_prob < 1.0:
            yield ("drop_prob", f"must be in [0, 1), got {self.drop_prob}")
        if self.round_timeout_s <= 0:
            yield ("round_timeout_s", f"must be > 0, got {self.round_timeout_s}")
        if self.min_sites < 1:
            yield ("min_sites", f"must be >= 1, got {self.min_sites}")


@dataclass(frozen=True)
class RegisterFederatedConfig:
    enabled: bool = True
    name: str | None = None  # default mmray__federated_<model>
    survival_times_days: tuple[float, ...] = (365.0, 730.0, 1095.0, 1825.0)
    registry: RegistryConfig = field(default_factory=lambda: RegistryConfig(
        experiment="mmray-models", gate=GateConfig(metric="harrell_c_mean", threshold=0.55)))


@dataclass(frozen=True)
class FederatedConfig:
    store: str  # the coordinator's store: results, MLflow, registry; it never holds a site's rows
    sites: dict[str, SiteConfig] = field(default_factory=dict)
    labels_group: str = "labels"
    task: Literal["survival_discrete", "survival_cox"] = "survival_discrete"
    model: str = "early_fusion"
    hparams: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ("clinical", "expression", "mutations_cnv")
    algorithm: Literal["fedavg", "fedprox"] = "fedprox"
    mu: float = 0.01  # FedProx proximal weight (ignored by fedavg)
    rounds: int = 40
    local_epochs: int = 2
    clients_per_round: float = 1.0  # fraction of the sites sampled each round (at least one)
    patience: int = 10  # rounds without a better pooled validation C-index
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    grad_clip: float = 5.0
    ties: Literal["efron", "breslow"] = "efron"
    n_bins: int = 4
    val_fraction: float = 0.2
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    failures: FailureConfig = field(default_factory=FailureConfig)
    seed: int = 0
    run_name: str | None = None
    output: str | None = None  # default <store>/_results/<run_name>
    final_fit: bool = True  # after CV, one federated fit on every site's rows (the registered model)
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="mmray-federated"))
    register: RegisterFederatedConfig = field(default_factory=RegisterFederatedConfig)

    def validate(self):
        if len(self.sites) < 1:
            yield ("sites", "name at least one site: sites: {a: {store: /data/site_a}, b: {store: s3://...}}")
        for name in self.sites:
            if not SITE_NAME.match(name):
                yield (f"sites.{name}", "site names: letters, digits, '_' and '-' (they name Ray resources)")
        for name in self.failures.drop:
            if name not in self.sites:
                yield (f"failures.drop.{name}", f"not a site; sites: {sorted(self.sites)}")
        if self.model not in FEDERATED_MODELS:
            yield ("model", f"federated training takes the tabular torch fusion models {list(FEDERATED_MODELS)}, "
                            f"got {self.model!r}")
        if "tiles" in self.modalities:
            yield ("modalities", "tile bags are not federated; use patient-level 'slide' features")
        if not self.modalities:
            yield ("modalities", "name at least one modality")
        for key in ("rounds", "local_epochs", "patience", "batch_size", "n_bins"):
            if getattr(self, key) < 1:
                yield (key, f"must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.clients_per_round <= 1.0:
            yield ("clients_per_round", f"a fraction in (0, 1], got {self.clients_per_round}")
        if self.mu < 0:
            yield ("mu", f"must be >= 0, got {self.mu}")
        if not 0.0 < self.val_fraction < 0.5:
            yield ("val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        if self.task == "survival_discrete" and self.n_bins < 2:
            yield ("n_bins", "survival_discrete needs at least 2 bins")
