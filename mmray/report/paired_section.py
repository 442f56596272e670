"""Report section: every model against the best single baseline, paired fold by fold (``paired.csv``)."""

from __future__ import annotations

import html

import numpy as np

from mmray.report import render
from mmray.report.document import InputMissing, para
from mmray.report.inputs import TrainRun


def paired_section(run: TrainRun) -> list[str]:
    t = run.paired
    if t is None or t.empty:
        raise InputMissing(f"train run {run.name} has no paired comparison (paired.csv; runs before repeated CV "
                           f"or with a single model)",
                           f"mmray train --config ray_jobs/configs/train.yaml --store {run.meta.get('store', 'STORE')}")
    body = []
    for task, g in t.groupby("task", sort=False):
        better = g[(g["ci_low"] > 0)]
        body.append(para(
            f"<b>{html.escape(task)}</b>: baseline <b>{html.escape(str(g['baseline'].iloc[0]))}</b> (the best "
            f"single-modality model); per (repeat, fold) difference in {html.escape(str(g['metric'].iloc[0]))} on "
            f"the same held-out patients. {len(better)} of {len(g)} model(s) have a 95% bootstrap interval of the "
            f"mean difference above 0. Folds of one repeat share training patients, so the Wilcoxon p-values "
            f"are optimistic."))
        rows = [{**r, "flag": bool(np.isfinite(r["ci_low"]) and r["ci_low"] > 0)} for r in g.to_dict("records")]
        cols = [("model", "model"), ("modality_set", "modality set"), ("n_pairs", "folds"), ("mean", "mean"),
                ("baseline_mean", "baseline mean"), ("mean_diff", "mean difference"), ("sd_diff", "sd"),
                ("ci_low", "CI low"), ("ci_high", "CI high"), ("wilcoxon_p", "Wilcoxon p"), ("wins", "wins")]
        body.append(render.table(rows, cols, mark=lambda r: r["flag"]))
    return body
