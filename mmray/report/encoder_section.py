"""Report section: encoders pretrained on the cohort (``mmray pretrain``), how they learned, what they changed.

Reads every ``<store>/_encoders/*/pretrain.json`` (and ``compare.json`` when the pipeline's pretrain stage
compared encoders): per encoder its identity, data, time and the probe scores before training (the random
initialisation) and after each epoch (a plot), and the slide-only cross-validated C of the random and the
pretrained encoder on the same folds with the same models.
"""

from __future__ import annotations

import html
import json

from mmray import uri as uri_mod
from mmray.report import render
from mmray.report.document import InputMissing, figure, para


def _runs(store) -> list[tuple[dict, dict | None]]:
    root = uri_mod.join(store.uri, "_encoders")
    try:
        files = uri_mod.list_files(root)
    except FileNotFoundError:
        return []
    out = []
    for f in files:
        if f.endswith("/pretrain.json"):
            run = json.loads(uri_mod.read_bytes(f))
            try:
                cmp = json.loads(uri_mod.read_bytes(f[: -len("pretrain.json")] + "compare.json"))
            except (FileNotFoundError, OSError, ValueError):
                cmp = None
            out.append((run, cmp))
    return out


def _probe_figure(history: list[dict]):
    rows = [h for h in history if any(k.startswith("probe_") for k in h)]
    keys = sorted({k for h in rows for k in h if k.startswith("probe_")})
    if not rows or not keys:
        return None
    fig = render.new_figure(5.0, 2.8)
    ax = fig.add_subplot(1, 1, 1)
    for k in keys:
        ax.plot([h["epoch"] for h in rows if k in h], [h[k] for h in rows if k in h], marker="o", label=k[6:])
    ax.set_xlabel("epoch (0: random initialisation)")
    ax.set_ylabel("held-out score")
    ax.legend(fontsize=8)
    return fig


def encoder_section(store) -> list[str]:
    runs = _runs(store)
    if not runs:
        raise InputMissing("no encoder pretrained on this cohort", "mmray pretrain --cohort C --store S (or the "
                                                                   "pipeline's pretrain stage)")
    body = []
    for run, cmp in runs:
        hist = run.get("history") or []
        first = next((h for h in hist if h.get("epoch") == 0), {})
        last = hist[-1] if hist else {}
        body.append(f"<h3>{html.escape(run['name'])}: {html.escape(run['backbone'])}</h3>")
        body.append(para(f"Encoder <code>{html.escape(run['encoder_id'])}</code>, DINO on {run['n_tiles']} tissue "
                         f"tiles of {run['n_slides']} slide(s), {max(len(hist) - 1, 0)} epoch(s) in "
                         f"{run['seconds']:.0f} s (last epoch {last.get('images_per_s', float('nan')):.0f} "
                         f"images/s)" + (f"; registered as {html.escape(str(run['mlflow'].get('model')))} "
                                         f"v{run['mlflow'].get('version')}" if run.get("mlflow", {}).get("version")
                                         else "") + "."))
        probes = [k for k in last if k.startswith("probe_")]
        if probes:
            rows = [{"score": k[6:], "random init": first.get(k), "pretrained": last.get(k)} for k in probes]
            body.append(render.table(rows, [("score", "held-out probe"), ("random init", "random init (epoch 0)"),
                                            ("pretrained", f"after epoch {last.get('epoch')}")]))
            fig = _probe_figure(hist)
            if fig is not None:
                body.append(figure(fig, alt="probe scores per epoch", caption="Linear-probe balanced accuracy and "
                                   "k-NN accuracy of the teacher's embeddings on held-out slides' tiles, per epoch."))
        if run.get("region", {}).get("encoder_id"):
            reg = run["region"]
            body.append(para(f"4096 level: <code>{html.escape(reg['encoder_id'])}</code> over {reg['n_regions']} "
                             f"region grids of {reg['grid']} x {reg['grid']} tiles -> wsi_regions_hipt."))
        if cmp:
            rows = [{"model": r["model"], "random": r["random"], "pretrained": r["pretrained"],
                     "difference": r["difference"], "better": f"{r['folds_better']}/{len(r['random_folds'])}"}
                    for r in cmp["models"]]
            body.append(para(f"Slide-only models on the same folds: slide features of the random encoder "
                             f"(<code>{html.escape(cmp['random']['encoder_id'][:48])}</code>, wsi_patient@"
                             f"{cmp['random']['version']}) vs the pretrained one (wsi_patient@"
                             f"{cmp['pretrained']['version']})."))
            body.append(render.table(rows, [("model", "model"), ("random", "C, random encoder"),
                                            ("pretrained", "C, pretrained encoder"), ("difference", "mean difference"),
                                            ("better", "folds better")]))
    return body
