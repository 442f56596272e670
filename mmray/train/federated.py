"""``mmray federated``: cross-validated federated training across sites, each with its own store.

:func:`run_federated` starts one actor per site (pinned to the nodes that
declare the custom resource ``site_<name>``), cross-validates the model on
every site's own saved folds with :func:`mmray.train.federated_rounds.fit_fold`
(test fold ``k`` of every site held out together), fits the final model on
every site's rows, writes ``rounds.parquet`` (one row per fold x round:
sampled, trained and dropped sites, loss, per-site and pooled C) and
``federated.json`` under ``<store>/_results/<run>`` of the coordinator's
store, logs each round's C-indices to MLflow (``fold<k>.c_pooled_test``,
``fold<k>.c_site_<site>_test``, step = round) and registers the final model
with per-site lineage (:mod:`mmray.train.federated_register`).

What crosses from a site to the coordinator: per-column statistics for the
preprocessing, model weights with their row counts, pair counts and scalar
metrics (:mod:`mmray.train.federated_wire` checks each answer).  No row, no
patient identifier, no per-patient prediction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import mmray
from mmray.config import config_hash, to_dict
from mmray.errors import ConfigError, DataError
from mmray.train import results as R
from mmray.train.federated_config import FederatedConfig
from mmray.train.federated_rounds import FoldFit, Sites, fit_fold
from mmray.train.federated_site import FINAL, site_actor

log = logging.getLogger("mmray.federated")
EXIT_OK, EXIT_PARTIAL = 0, 3


@dataclass
class FederatedReport:
    run: str
    output: str
    folds: list[dict]
    rounds: pd.DataFrame
    summary: dict
    sites: dict
    files: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    registration: dict | None = None
    final: FoldFit | None = None
    fits: list = field(default_factory=list)  # the CV folds' fits (weights, preprocessing, rounds)

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if any(f.get("status") == "error" for f in self.folds) else EXIT_OK

    def text(self) -> str:
        s = self.summary
        lines = [f"federated run {self.run}: {len(self.sites)} sites, {len(self.folds)} folds; results in {self.output}",
                 f"  pooled (site-stratified) Harrell C on the test folds: {s['harrell_c_mean']:.3f} "
                 f"+- {s['harrell_c_sd']:.3f}"]
        for site, c in s.get("site_c_mean", {}).items():
            lines.append(f"  site {site}: C {c:.3f} ({self.sites[site]['n_patients']} patients)")
        dropped = int(self.rounds["n_dropped"].sum()) if len(self.rounds) else 0
        lines.append(f"  {len(self.rounds)} rounds; {dropped} site update(s) missing (drop-outs, failures)")
        for f in self.folds:
            if f.get("status") == "error":
                lines.append(f"  FAILED fold {f['fold']}: {f['error']}")
        if self.registration:
            r = self.registration
            lines.append(f"  registry: {r['name']}: {r['outcome']} ({r['reason']})"
                         + (f" version {r['version']}" if r.get("version") else ""))
        return "\n".join(lines)


def _check_resources(cfg: FederatedConfig) -> None:
    import ray

    have = ray.cluster_resources()
    missing = [n for n in cfg.sites if have.get(f"site_{n}", 0) < cfg.sites[n].resource_amount]
    if missing:
        raise ConfigError(f"no Ray node declares the resource(s) {[f'site_{n}' for n in missing]}: start each "
                          f"site's nodes with `ray start --resources '{{\"site_<name>\": 1}}'` (mmray federated "
                          f"without --address starts a local Ray that declares them all)")


def start_sites(cfg: FederatedConfig, *, on_receive: Callable | None = None) -> Sites:
    """One actor per site (module doc), waited for: a site whose store cannot be read is an error here."""
    _check_resources(cfg)
    actors = {name: site_actor(name, site, modalities=cfg.modalities, task=cfg.task, labels_group=cfg.labels_group,
                               n_folds=cfg.folds.n_folds, folds_seed=cfg.folds.seed, val_fraction=cfg.val_fraction,
                               seed=cfg.seed, drop_rounds=cfg.failures.drop.get(name, ()),
                               drop_prob=cfg.failures.drop_prob)
              for name, site in cfg.sites.items()}
    sites = Sites(actors, timeout_s=max(cfg.failures.round_timeout_s, 600.0), on_receive=on_receive)
    _, failed = sites.call(sites.names, "ping")
    if failed:
        raise DataError("site(s) could not start: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    sites.timeout_s = cfg.failures.round_timeout_s
    return sites


def _round_rows(fit: FoldFit) -> list[dict]:
    out = []
    for r in fit.rounds:
        row = {k: r[k] for k in ("fold", "round", "updated", "seconds", "train_loss", "c_pooled_val", "c_pooled_test",
                                 "n_sites_val", "n_sites_test")}
        row.update(sampled=",".join(r["sampled"]), trained=",".join(r["trained"]), n_dropped=len(r["dropped"]),
                   dropped=json.dumps(r["dropped"]), best=r["round"] == fit.best_round)
        for split in ("val", "test"):
            for site, c in r[f"c_site_{split}"].items():
                row[f"c_{site}_{split}"] = c
        out.append(row)
    return out


def summarize(fits: list[FoldFit]) -> dict:
    cs = np.array([f.test["c_pooled"] for f in fits], float)
    sites = sorted({s for f in fits for s in f.test["c_site"]})
    site_c = {s: float(np.nanmean([f.test["c_site"].get(s, np.nan) for f in fits])) for s in sites}
    ok = cs[np.isfinite(cs)]
    return {"harrell_c_mean": float(ok.mean()) if ok.size else math.nan,
            "harrell_c_sd": float(ok.std(ddof=1)) if ok.size > 1 else 0.0, "n_folds_ok": int(ok.size),
            "fold_c": [float(c) for c in cs], "site_c_mean": site_c,
            "best_rounds": [int(f.best_round) for f in fits]}


def run_federated(cfg: FederatedConfig, *, on_receive: Callable | None = None,
                  sites: Sites | None = None) -> FederatedReport:
    """The whole job (module doc); ``on_receive(site, method, answer)`` sees everything a site sends."""
    from mmray.store import FeatureStore

    coordinator = FeatureStore(cfg.store)
    run = cfg.run_name or f"federated-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}"
    output = cfg.output or R.default_output(coordinator.uri, run)
    sites = sites or start_sites(cfg, on_receive=on_receive)
    lineage = dict(zip(sites.names, sites.ask_all("lineage")))
    log.info("federated %s: %d sites (%s), %s %s on %s, %d folds x up to %d rounds x %d local epochs", run,
             len(lineage), ", ".join(f"{s} {v['n_patients']} patients" for s, v in lineage.items()), cfg.algorithm,
             cfg.model, "+".join(cfg.modalities), cfg.folds.n_folds, cfg.rounds, cfg.local_epochs)
    tracker = _Tracker(cfg, coordinator.uri, run)
    fits, folds = [], []
    for fold in range(cfg.folds.n_folds):
        t0 = time.perf_counter()
        try:
            fit = fit_fold(sites, cfg, fold=fold, on_round=tracker.round)
        except Exception as e:  # noqa: BLE001  one failed fold is recorded; the others go on
            log.error("federated fold %d FAILED: %s", fold, e)
            folds.append({"fold": fold, "status": "error", "error": str(e)[:2000]})
            continue
        fits.append(fit)
        folds.append({"fold": fold, "status": "ok", "best_round": fit.best_round, "rounds": len(fit.rounds),
                      "c_pooled_test": fit.test["c_pooled"], "c_pooled_val": fit.test["c_pooled_val"],
                      "c_site_test": fit.test["c_site"], "seconds": time.perf_counter() - t0,
                      "features": {m: int(d) for m, d in fit.pre.dims.items()}})
        log.info("federated fold %d: best round %d, pooled test C %.3f (%s)", fold, fit.best_round, fit.test["c_pooled"],
                 ", ".join(f"{s} {c:.3f}" for s, c in fit.test["c_site"].items()))
    if not fits:
        raise DataError("every federated fold failed: " + "; ".join(f["error"] for f in folds))
    summary = summarize(fits)
    final = fit_fold(sites, cfg, fold=FINAL, on_round=tracker.round) if cfg.final_fit else None
    rounds = pd.DataFrame([r for f in fits + ([final] if final else []) for r in _round_rows(f)])
    meta = {"run": run, "kind": "federated", "store": coordinator.uri, "output": output, "sites": lineage,
            "folds": folds, "summary": summary, "config": to_dict(cfg), "config_hash": config_hash(cfg),
            "mmray_version": mmray.__version__, "final_best_round": final.best_round if final else None,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    report = FederatedReport(run, output, folds, rounds, summary, lineage, final=final, fits=fits)
    if final is not None and cfg.register.enabled:
        from mmray.train.federated_register import register_federated

        report.registration = register_federated(cfg, sites, final, summary=summary, lineage=lineage, run=run,
                                                 store=coordinator.uri)
        meta["registration"] = report.registration
    files = {"rounds.parquet": R.parquet_bytes(rounds), "federated.json": R.json_bytes(meta)}
    report.files = R.write_outputs(output, files)
    report.mlflow_run_id = tracker.finish(meta, summary, files)
    return report


class _Tracker:
    """MLflow run of a federated job: per-round C-indices as they come (a side channel: failures only warn)."""

    def __init__(self, cfg: FederatedConfig, store: str, run: str):
        self.cfg, self.run_id, self.client = cfg, None, None
        if not cfg.mlflow.enabled:
            return
        try:
            from mlflow import MlflowClient

            from mmray.registry.config import RegistryConfig, resolve_tracking

            tracking, artifacts = resolve_tracking(RegistryConfig(tracking_uri=cfg.mlflow.tracking_uri,
                                                                  workdir=cfg.mlflow.workdir), store=store)
            self.client = MlflowClient(tracking_uri=tracking)
            exp = self.client.get_experiment_by_name(cfg.mlflow.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.mlflow.experiment,
                                                                                  artifact_location=artifacts)
            self.run_id = self.client.create_run(exp_id, run_name=run, tags={"mmray.kind": "federated",
                                                                            "mmray.store": store}).info.run_id
            params = {"model": cfg.model, "task": cfg.task, "algorithm": cfg.algorithm, "mu": cfg.mu,
                      "rounds": cfg.rounds, "local_epochs": cfg.local_epochs,
                      "clients_per_round": cfg.clients_per_round, "modalities": ",".join(cfg.modalities),
                      "sites": ",".join(cfg.sites), "n_folds": cfg.folds.n_folds, "lr": cfg.lr,
                      "batch_size": cfg.batch_size, "seed": cfg.seed}
            for k, v in params.items():
                self.client.log_param(self.run_id, k, v)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow tracking of the federated run failed: %s", e)
            self.client = None

    def round(self, row: dict) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        prefix = "final" if row["fold"] < 0 else f"fold{row['fold']}"
        now = int(time.time() * 1000)
        values = {"c_pooled_val": row["c_pooled_val"], "c_pooled_test": row["c_pooled_test"],
                  "train_loss": row["train_loss"], "n_trained": len(row["trained"]),
                  **{f"c_site_{s}_{sp}": c for sp in ("val", "test") for s, c in row[f"c_site_{sp}"].items()}}
        ms = [Metric(f"{prefix}.{k}", float(v), now, int(row["round"])) for k, v in values.items()
              if v is not None and math.isfinite(float(v))]
        try:
            self.client.log_batch(self.run_id, metrics=ms)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: round metrics not logged: %s", e)

    def finish(self, meta: dict, summary: dict, files: dict) -> str | None:
        if self.client is None:
            return None
        try:
            for k in ("harrell_c_mean", "harrell_c_sd"):
                if math.isfinite(summary[k]):
                    self.client.log_metric(self.run_id, k, summary[k])
            for s, c in summary["site_c_mean"].items():
                if math.isfinite(c):
                    self.client.log_metric(self.run_id, f"site_{s}.harrell_c_mean", c)
            self.client.log_text(self.run_id, json.dumps(meta, indent=1, default=str), "federated.json")
            self.client.set_terminated(self.run_id)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: federated run not finished cleanly: %s", e)
        return self.run_id
