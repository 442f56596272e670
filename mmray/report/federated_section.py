"""Report section: the newest federated run of the store (``mmray federated``; its coordinator store).

A table per site (patients, events, mean test-fold C) and per fold (best
round, pooled site-stratified C, each site's C), a chart of the pooled and
per-site test C-index over the rounds (mean over the folds that reached
the round), how many site updates were missing (drop-outs, failures), and
the registry outcome of the final model.
"""

from __future__ import annotations

import html
import io
import posixpath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mmray.report import render
from mmray.report.document import InputMissing, figure, para
from mmray.report.inputs import RESULTS_DIR
from mmray.store import FeatureStore, fsio


def has_federated_run(store: FeatureStore) -> bool:
    try:
        latest_federated_run(store, read_rounds=False)
    except (InputMissing, OSError):
        return False
    return True


def latest_federated_run(store: FeatureStore, *, read_rounds: bool = True) -> tuple[dict, pd.DataFrame | None]:
    """``(federated.json, rounds table)`` of the newest federated run under ``<store>/_results``."""
    fs, root = store.filesystem
    base = posixpath.join(root, RESULTS_DIR)
    found = []
    for name in fsio.subdirs(fs, base):
        path = posixpath.join(base, name, "federated.json")
        if fsio.exists(fs, path):
            try:
                meta = fsio.get_json(fs, path)
            except (OSError, ValueError):
                continue
            found.append((str(meta.get("created_utc") or ""), name, meta))
    if not found:
        raise InputMissing(f"no federated run under {store.uri}/{RESULTS_DIR}",
                           f"mmray federated --config ray_jobs/configs/federated.yaml --store {store.uri} "
                           f"--site NAME=STORE ...")
    _, name, meta = sorted(found, key=lambda t: (t[0], t[1]))[-1]
    if not read_rounds:
        return meta, None
    with fs.open_input_stream(posixpath.join(base, name, "rounds.parquet")) as f:
        rounds = pq.read_table(io.BytesIO(f.read())).to_pandas()
    return meta, rounds


def rounds_figure(rounds: pd.DataFrame, sites: list[str]):
    cv = rounds[rounds["fold"] >= 0]
    fig = render.new_figure(6.5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    by = cv.groupby("round")
    ax.plot(by["c_pooled_test"].mean(), color="black", linewidth=2, label="pooled (site-stratified)")
    for s in sites:
        col = f"c_{s}_test"
        if col in cv:
            ax.plot(by[col].mean(), linewidth=1, alpha=0.8, label=f"site {s}")
    ax.axhline(0.5, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("round")
    ax.set_ylabel("test-fold Harrell C (mean over folds)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def federated_section(store: FeatureStore) -> list[str]:
    meta, rounds = latest_federated_run(store)
    cfg, summary, sites = meta.get("config", {}), meta.get("summary", {}), meta.get("sites", {})
    names = sorted(sites)
    body = [para(f"Run <b>{html.escape(meta['run'])}</b>: {html.escape(str(cfg.get('algorithm')))} "
                 f"(mu {cfg.get('mu')}) of <b>{html.escape(str(cfg.get('model')))}</b> "
                 f"({html.escape(str(cfg.get('task')))}) on {html.escape(', '.join(cfg.get('modalities', [])))} "
                 f"across {len(names)} sites; up to {cfg.get('rounds')} rounds of {cfg.get('local_epochs')} local "
                 f"epoch(s), {cfg.get('clients_per_round')} of the sites sampled per round. Each site kept its rows; "
                 f"only weights, per-column statistics and pair counts reached the coordinator. "
                 f"Pooled C: Harrell's C over the pairs within each site's test fold, summed over sites: "
                 f"<b>{summary.get('harrell_c_mean', float('nan')):.3f} &plusmn; "
                 f"{summary.get('harrell_c_sd', float('nan')):.3f}</b> over {summary.get('n_folds_ok')} folds.")]
    site_c = summary.get("site_c_mean", {})
    body.append(render.table([{"site": s, "patients": sites[s].get("n_patients"), "events": sites[s].get("n_events"),
                               "c": site_c.get(s), "folds": sites[s].get("folds")} for s in names],
                             [("site", "site"), ("patients", "patients"), ("events", "events"),
                              ("c", "mean test C"), ("folds", "its folds")]))
    rows = []
    for f in meta.get("folds", []):
        if f.get("status") != "ok":
            rows.append({"fold": f["fold"], "best": "failed", "pooled": None, **{s: None for s in names}})
            continue
        rows.append({"fold": f["fold"], "best": f["best_round"], "pooled": f["c_pooled_test"],
                     **{s: f["c_site_test"].get(s) for s in names}})
    body.append(render.table(rows, [("fold", "fold"), ("best", "best round"), ("pooled", "pooled C"),
                                    *[(s, f"C {s}") for s in names]]))
    if len(rounds):
        missing = int(rounds["n_dropped"].sum())
        body.append(figure(rounds_figure(rounds, names), alt="federated C-index per round",
                           caption=f"Test-fold C-index per round, pooled and per site. {missing} site update(s) "
                                   f"were missing over {len(rounds)} rounds (drop-outs and failures; the round "
                                   f"averaged the others).", attrs={"kind": "federated-rounds"}))
    reg = meta.get("registration")
    if reg:
        body.append(para(f"Final model (every site's rows, best round {meta.get('final_best_round')}): "
                         f"<b>{html.escape(str(reg.get('name')))}</b> {html.escape(str(reg.get('outcome')))} "
                         f"({html.escape(str(reg.get('reason')))})"
                         + (f", version {html.escape(str(reg['version']))}" if reg.get("version") else "")
                         + "; lineage tags name each site's store, feature versions and folds."))
    if not np.isfinite(summary.get("harrell_c_mean", np.nan)):
        body.append(para("<b>Note:</b> no fold gave a pooled C-index."))
    return body
