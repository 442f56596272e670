"""The centralised reference of a federated run: the same model trained on the pooled rows, same folds.

For evaluation only (tests, ``benchmarks/bench_federated.py``, the numbers
in docs/training.md): it reads every site's store *in this process*, which
a real federation never does.  Each site's rows are split exactly as the
site splits them (:class:`~mmray.train.federated_site.SiteData`: its saved
folds, its inner validation split), the splits are pooled, and the model
is trained by the ordinary centralised path
(:func:`mmray.train.fold_fit.fit_fold_torch`, in-process executor) with
``rounds x local_epochs`` epochs and ``patience x local_epochs`` patience.
Scores: Harrell's C over the pooled test fold (``c_global``) and the
site-stratified C the federated run reports (``c_pooled``: pairs within a
site).  :func:`federated_scores` scores a federated fold's model on the
same pooled test rows, so both models are compared on both definitions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sksurv.metrics import concordance_index_censored

from mmray.train.federated_config import FederatedConfig
from mmray.train.federated_site import SiteData, with_columns
from mmray.train.fold_fit import FoldRows, FoldSettings, fit_fold_torch


def site_data(cfg: FederatedConfig) -> dict[str, SiteData]:
    return {n: SiteData(n, store=s.store, modalities=cfg.modalities, task=cfg.task, labels_group=cfg.labels_group,
                        n_folds=cfg.folds.n_folds, folds_seed=cfg.folds.seed, val_fraction=cfg.val_fraction,
                        seed=cfg.seed) for n, s in cfg.sites.items()}


def _c(risk, time, event) -> tuple[float, int, int, int]:
    e = np.asarray(event, bool)
    c, conc, disc, tied, _ = concordance_index_censored(e, np.asarray(time, float), np.asarray(risk, float))
    return float(c), int(conc), int(disc), int(tied)


def scores(pred: pd.DataFrame) -> dict:
    """``c_global`` and the site-stratified ``c_pooled`` of ``patient_id, site, risk, time_days, event`` rows."""
    out = {"c_global": _c(pred["risk"], pred["time_days"], pred["event"])[0]}
    conc = disc = tied = 0
    for _, p in pred.groupby("site"):
        if p["event"].astype(bool).any() and len(p) > 1:
            try:
                _, a, b, t = _c(p["risk"], p["time_days"], p["event"])
            except ValueError:
                continue
            conc, disc, tied = conc + a, disc + b, tied + t
    out["c_pooled"] = (conc + 0.5 * tied) / (conc + disc + tied) if conc + disc + tied else float("nan")
    return out


def pooled_rows(sites: dict[str, SiteData], fold: int) -> tuple[FoldRows, dict[str, str]]:
    parts = {n: s._split(fold) for n, s in sites.items()}
    rows = FoldRows(**{k: pd.concat([p[k] for p in parts.values()], ignore_index=True)
                       for k in ("fit", "val", "test")})
    site_of = {str(pid): n for n, p in parts.items() for pid in p["test"]["patient_id"]}
    return rows, site_of


def centralised_reference(cfg: FederatedConfig, *, workdir: str | None = None) -> list[dict]:
    """Per fold: the pooled model's ``c_global`` and ``c_pooled`` on the pooled test fold (module doc)."""
    sites = site_data(cfg)
    settings = FoldSettings(executor="local", workers=1, max_epochs=cfg.rounds * cfg.local_epochs,
                            patience=cfg.patience * cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                            weight_decay=cfg.weight_decay, val_fraction=cfg.val_fraction, grad_clip=cfg.grad_clip,
                            ties=cfg.ties, n_bins=cfg.n_bins, top_k_var=dict(cfg.preprocess.top_k_var),
                            screen={m: dict(v) for m, v in cfg.preprocess.screen.items()}, seed=cfg.seed)
    out = []
    with tempfile.TemporaryDirectory(prefix="mmray-fedref-", dir=workdir) as tmp:
        for fold in range(cfg.folds.n_folds):
            rows, site_of = pooled_rows(sites, fold)
            res = fit_fold_torch(model=cfg.model, hparams=dict(cfg.hparams), task=cfg.task, modalities=cfg.modalities,
                                 rows=rows, fold=fold, classes=None, settings=settings,
                                 run_dir=Path(tmp) / f"fold{fold}")
            pred = res.predictions.assign(site=lambda p: p["patient_id"].astype(str).map(site_of))
            out.append({"fold": fold, **scores(pred), "best_epoch": res.info.get("best_epoch")})
    return out


@torch.inference_mode()
def federated_scores(fit, sites: dict[str, SiteData]) -> dict:
    """A federated fold's best model scored on the pooled test rows (``c_global`` and ``c_pooled``)."""
    from mmray.train.evaluate import risk_of
    from mmray.train.preprocess import Prepared  # noqa: F401  (the transform's output type)

    rows, site_of = pooled_rows(sites, fit.fold)
    test = rows.test
    prep = fit.pre.transform(with_columns(test, fit.pre))
    model = fit.spec.build()
    model.load_state_dict(fit.best_state)
    model.eval()
    out = model(prep.batch()).float().numpy()
    pred = pd.DataFrame({"patient_id": prep.patient_ids, "risk": risk_of(fit.spec.task, out),
                         "time_days": prep.time_days, "event": prep.event})
    pred["site"] = pred["patient_id"].astype(str).map(site_of)
    return scores(pred)
