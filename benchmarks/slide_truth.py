"""How close the weight-free slide features come to the synthetic cohort's planted truth (issue #14's figures).

    .venv/bin/python benchmarks/slide_truth.py --store demo_out/store --cohort demo_out/cohort --json slide_truth.json

Needs an unpseudonymised store (slide ids as in ``truth.json``) made from a cohort ``mmray synth`` wrote:

* ``nuclei``: Spearman correlation, over slides, of the measured ``nuclei_per_mm2`` (``wsi_nuclei_slide``)
  with the planted density: ``nuclear_density_tissue_per_mm2`` (expected over all tissue, what a slide-level
  measurement sees) and ``nuclear_density_per_mm2`` (inside the tumour);
* ``tumour_filter``: tile-level precision, recall and F1 of ``wsi_tumour``'s ``tumour_probability >=
  threshold`` against the planted tumour mask (a tile is tumour when at least half its area is), over all
  tiles and over the tiles of slides without an annotation (what the filter was not shown);
* ``site_signature``: the out-of-fold site AUCs the WSI ingest stored (before and after normalisation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmray.store import FeatureStore  # noqa: E402
from mmray.synth.slide_tissue import truth_mask  # noqa: E402


def nuclei_figures(store: FeatureStore, slides: pd.DataFrame) -> dict:
    from scipy.stats import spearmanr

    measured = store.read_table("wsi_nuclei_slide", columns=["slide_id", "nuclei_per_mm2"])
    both = measured.merge(slides, on="slide_id")
    out = {"n_slides": int(len(both))}
    for planted in ("nuclear_density_tissue_per_mm2", "nuclear_density_per_mm2"):
        if planted in both:
            out[f"spearman_vs_{planted}"] = float(spearmanr(both["nuclei_per_mm2"], both[planted])[0])
    return out


def tile_truth(tiles: pd.DataFrame, entry: dict, size_l0: float) -> np.ndarray:
    """Whether at least half of each tile's level-0 box is planted tumour."""
    mask, grid = truth_mask(entry)
    out = np.zeros(len(tiles), bool)
    for i, (x, y) in enumerate(zip(tiles["x"].to_numpy(), tiles["y"].to_numpy())):
        r0, r1 = int(y // grid), int(np.ceil((y + size_l0) / grid))
        c0, c1 = int(x // grid), int(np.ceil((x + size_l0) / grid))
        cells = mask[max(r0, 0):min(r1, mask.shape[0]), max(c0, 0):min(c1, mask.shape[1])]
        out[i] = cells.size > 0 and cells.mean() >= 0.5
    return out


def filter_figures(store: FeatureStore, slides: pd.DataFrame) -> dict:
    from sklearn.metrics import f1_score, precision_score, recall_score

    man = store.manifest("wsi_tumour")
    thr = float(man["params"]["threshold"])
    tiling = store.manifest("wsi_tiles")["params"]["embed_key"]["tiling"]
    tum = store.read_table("wsi_tumour")
    tum = tum[tum["scale"] == "tile"]
    truth_of = slides.set_index("slide_id")
    parts = []
    for sid, g in tum.groupby("slide_id"):
        if sid not in truth_of.index or not isinstance(truth_of.at[sid, "tumour_mask"], dict):
            continue
        size = tiling["tile_px"] * tiling["target_mpp"] / float(truth_of.at[sid, "mpp"])
        parts.append(g.assign(truth=tile_truth(g, truth_of.at[sid, "tumour_mask"], size),
                              annotated_slide=isinstance(truth_of.at[sid, "annotation"], str)))
    tiles = pd.concat(parts)

    def scores(t: pd.DataFrame) -> dict:
        pred = t["tumour_probability"].to_numpy() >= thr
        return {"tiles": int(len(t)), "tumour_share": float(t["truth"].mean()),
                "precision": float(precision_score(t["truth"], pred)), "recall": float(recall_score(t["truth"], pred)),
                "f1": float(f1_score(t["truth"], pred))}

    return {"threshold": thr, "n_annotated_slides": man["params"].get("n_annotated_slides"),
            "all_tiles": scores(tiles), "unannotated_slides": scores(tiles[~tiles["annotated_slide"]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--cohort", required=True, help="the synthetic cohort folder (holds truth.json)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    store = FeatureStore(a.store)
    slides = pd.DataFrame(json.loads((Path(a.cohort) / "truth.json").read_text())["slides"])
    out = {"nuclei": nuclei_figures(store, slides), "tumour_filter": filter_figures(store, slides)}
    from mmray.report import render

    try:
        site = render.read_report(store, "site_signature")
        out["site_signature"] = {"stain_method": site.get("stain_method"),
                                 "checks": [{k: c.get(k) for k in ("features", "what", "auc")} for c in site["checks"]]}
    except Exception as e:  # noqa: BLE001  no check stored: say so in the output
        out["site_signature"] = {"error": str(e)}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
