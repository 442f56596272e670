"""Register the final federated model: the served pyfunc, gated on the pooled CV C-index, with per-site lineage.

The model is the same :class:`~mmray.registry.tuned_model.TunedPyfunc` a
tuned torch model becomes (inputs: training-table columns by name; outputs:
risk and survival at the configured times), built from the federated
preprocessing and the final fit's weights.  Before registering, every site
checks on its own rows that the model given only its feature columns gives
the training code's risks (one number per site comes back).  Lineage tags:
each site's store, feature-group versions, folds version and hash, patient
and event counts (``mmray.site.<name>.*``), the rounds, the algorithm, the
code revision and config hash.  Only ``survival_discrete`` models are
registered: a ``survival_cox`` model's survival curves need a Breslow
baseline over pooled risk sets (recorded as skipped with that reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mmray
from mmray.config import config_hash, to_dict
from mmray.errors import RegistryError
from mmray.registry.lineage import TAG, data_key, model_name
from mmray.registry.registry import Candidate, Registry
from mmray.store.manifest import git_revision

PREFIX = "mmray__federated_"


@dataclass(frozen=True)
class FederatedLineage:
    """Where a federated model came from (every field becomes ``mmray.*`` tags; sites under ``mmray.site.*``)."""

    model: str
    task: str
    modalities: tuple[str, ...]
    hparams: dict
    algorithm: str
    run: str
    sites: dict  # site -> {store, feature_versions, folds, folds_hash, n_patients, n_events}
    best_round: int
    config_hash: str
    git_revision: str | None
    store: str  # the coordinator's
    mmray_version: str

    signature = None

    @property
    def feature_versions(self) -> dict[str, str]:
        return {f"{s}:{g}": v for s, info in sorted(self.sites.items()) for g, v in info["feature_versions"].items()}

    @property
    def data_key(self) -> str:
        folds = ",".join(f"{s}:{i['folds']}" for s, i in sorted(self.sites.items()))
        hashes = ",".join(i["folds_hash"] for _, i in sorted(self.sites.items()))
        return data_key(feature_versions=self.feature_versions, folds=folds, folds_hash=hashes, store=self.store)

    def model_tags(self) -> dict[str, str]:
        return {TAG + "kind": "federated", TAG + "model": self.model, TAG + "task": self.task}

    def model_description(self) -> str:
        return (f"mmray {self.model} ({self.task}) on {', '.join(self.modalities)}, trained federated "
                f"({self.algorithm}) across sites {', '.join(sorted(self.sites))}; inputs are training-table columns")

    def run_tags(self) -> dict[str, str]:
        tags = {"kind": "federated", "model": self.model, "task": self.task, "modalities": ",".join(self.modalities),
                "hparams": json.dumps(self.hparams, sort_keys=True, default=str)[:7000],
                "algorithm": self.algorithm, "federated_run": self.run, "best_round": str(self.best_round),
                "sites": ",".join(sorted(self.sites)), "config_hash": self.config_hash,
                "feature_versions": json.dumps(self.feature_versions, sort_keys=True)[:7000],
                "folds": ",".join(f"{s}:{i['folds']}" for s, i in sorted(self.sites.items())),
                "data_key": self.data_key, "git_revision": self.git_revision or "unknown", "store": self.store,
                "mmray_version": self.mmray_version}
        for s, info in sorted(self.sites.items()):
            tags[f"site.{s}.store"] = str(info["store"])
            tags[f"site.{s}.feature_versions"] = json.dumps(info["feature_versions"], sort_keys=True)
            tags[f"site.{s}.folds"] = str(info["folds"])
            tags[f"site.{s}.folds_hash"] = str(info["folds_hash"])
            tags[f"site.{s}.n_patients"] = str(info["n_patients"])
            tags[f"site.{s}.n_events"] = str(info["n_events"])
        return {TAG + k: v for k, v in tags.items()}

    def version_tags(self, *, features: list[str], metrics: dict[str, float]) -> dict[str, str]:
        tags = self.run_tags()
        tags[TAG + "features"] = json.dumps(list(features))
        tags[TAG + "metrics"] = json.dumps({k: float(v) for k, v in sorted(metrics.items())})
        return tags


def build_pyfunc(cfg, sites, final, *, name: str):
    """The servable model of the final fit, checked at every site; ``(pyfunc, n_features)``."""
    from mmray.registry.tuned_model import TorchPredictor, TunedEstimator, TunedPyfunc, torch_columns
    from mmray.train.signatures import survival_grid

    pre, spec = final.pre, final.spec
    predictor = TorchPredictor(preprocessor=pre, spec=spec, state_dict=final.best_state)
    cols = torch_columns(pre, model_modalities=predictor.modalities, table_columns=final.table_columns)
    if cols.text:
        raise RegistryError(f"input column(s) {cols.text[:10]} are text; the prediction API takes numbers: encode "
                            f"them at ingest (tables.clinical.categorical_columns one-hot)")
    estimator = TunedEstimator(task=spec.task, columns=cols, predictor=predictor, baseline=None, bins=spec.bins)
    checks = sites.ask_all("check_model", estimator=estimator, features=cols.features)
    worst = max(c["max_abs_diff"] for c in checks)
    if worst > 1e-5:
        raise RegistryError(f"the federated model's risks from its {len(cols.features)} features differ from the "
                            f"whole-row risks by up to {worst:.3g} at some site; not registering")
    grid = survival_grid(cfg.register.survival_times_days, train_time_days=[spec.bins["max_days"]])
    info = {"model_name": name, "model": spec.model, "task": spec.task, "federated_run": "", "kind": "federated"}
    return TunedPyfunc(estimator, features=cols.features, times_days=grid, info=info), len(cols.features)


def register_federated(cfg, sites, final, *, summary: dict, lineage: dict, run: str, store: str) -> dict:
    """Gate (``register.registry.gate`` on the pooled CV C) and register the final model; what happened."""
    reg_cfg = cfg.register.registry
    name = cfg.register.name or model_name(cfg.model, prefix=PREFIX)
    lin = FederatedLineage(model=cfg.model, task=cfg.task, modalities=tuple(cfg.modalities), hparams=dict(cfg.hparams),
                           algorithm=cfg.algorithm, run=run, sites=lineage, best_round=final.best_round,
                           config_hash=config_hash(cfg), git_revision=git_revision(), store=store,
                           mmray_version=mmray.__version__)
    metrics = {"harrell_c_mean": summary["harrell_c_mean"], "harrell_c_sd": summary["harrell_c_sd"],
               **{f"site_{s}.harrell_c_mean": c for s, c in summary["site_c_mean"].items()},
               **{f"harrell_c_fold{k}": c for k, c in enumerate(summary["fold_c"])}}
    params = {"model": cfg.model, "task": cfg.task, "algorithm": cfg.algorithm, "mu": cfg.mu, "rounds": cfg.rounds,
              "local_epochs": cfg.local_epochs, "sites": ",".join(sorted(lineage)),
              "n_patients": sum(v["n_patients"] for v in lineage.values()),
              "n_events": sum(v["n_events"] for v in lineage.values()),
              "gate.metric": reg_cfg.gate.metric, "gate.threshold": reg_cfg.gate.threshold,
              **{f"hp.{k}": v for k, v in cfg.hparams.items()},
              "config": json.dumps(to_dict(cfg), default=str)[:6000]}
    registry = Registry(reg_cfg, store=store)
    if cfg.task != "survival_discrete":
        cand = Candidate(name, lin, "skipped", metrics=metrics, params=params,
                         reason="only survival_discrete federated models are registered: a Cox model's survival "
                                "curves need a Breslow baseline over risk sets that would span sites")
    else:
        model, n_features = build_pyfunc(cfg, sites, final, name=name)
        params["n_features"] = n_features
        cand = Candidate(name, lin, "fitted", metrics=metrics, params=params, model=model)
    out = registry.record(cand)
    return {"name": out.name, "outcome": out.outcome, "reason": out.reason, "version": out.version,
            "run_id": out.run_id, "champion": out.champion}
