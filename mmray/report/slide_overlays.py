"""Report section: nucleus and tumour-probability overlays of the highest- and lowest-risk slides.

For the best model with slide features (the run's summary), the held-out
patients with the highest and the lowest predicted risk; for one slide of
each:

* **tumour probability**: each tissue tile coloured by the tumour-tile
  filter's ``tumour_probability`` (``wsi_tumour``, :mod:`mmray.ingest.wsi_tumour`),
  tiles below the threshold outlined as the ones aggregates and MIL bags
  leave out;
* **nuclei**: each tile the nuclei pass measured coloured by its nuclei per
  mm^2 of tissue (``wsi_nuclei``), and the densest tile shown at the
  segmentation resolution with every nucleus centroid marked.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from mmray.report.document import InputMissing, figure, para
from mmray.report.heatmaps import read_region
from mmray.report.inputs import TrainRun
from mmray.report.performance import best_row, of_row
from mmray.report.slide_sections import _retrain, _slide_figure, pick_patients
from mmray.store import FeatureStore

NUCLEI, TUMOUR = "wsi_nuclei", "wsi_tumour"
ZOOM_PX = 384


def _slide_model(run: TrainRun):
    def with_slides(s: pd.DataFrame) -> pd.Series:
        return s["modalities"].astype(str).str.split(",").apply(lambda m: "slide" in m or "tiles" in m)

    row = best_row(run.summary, survival_only=True, where=with_slides)
    if row is None:
        raise InputMissing(f"train run {run.name} has no finished survival model with slide features",
                           _retrain(run, "models=[{name: heec, sets: [slide]}]"))
    return row


def _bags(store: FeatureStore, group: str) -> pd.DataFrame:
    return store.bags(group) if group in store.groups() else pd.DataFrame(columns=["bag_id", "patient_id"])


def overlay_section(store: FeatureStore, run: TrainRun, uris: dict[str, str], *, n_patients: int = 2) -> list[str]:
    nuclei, tumour = _bags(store, NUCLEI), _bags(store, TUMOUR)
    if nuclei.empty and tumour.empty:
        raise InputMissing(f"no {NUCLEI} or {TUMOUR} group in {store.uri} (nuclei and the tumour-tile filter are "
                           f"off)", f"mmray ingest --store {store.uri} --modalities wsi wsi.nuclei.enabled=true")
    row = _slide_model(run)
    preds = of_row(run.predictions, row)
    slides_of = pd.concat([nuclei, tumour]).groupby("patient_id")["bag_id"].apply(lambda b: sorted(set(b)))
    threshold = store.manifest(TUMOUR)["params"].get("threshold") if not tumour.empty else None
    body = [para(f"Risk of <b>{html.escape(row['model'])}</b> on <b>{html.escape(row['modality_set'])}</b>. "
                 + ("Tumour probability of every tissue tile from the tumour-tile filter (positive-unlabeled, "
                    f"learned from the annotated slides); outlined: tiles below {threshold}, left out of the "
                    "aggregates and MIL bags. " if threshold is not None else
                    "No tumour-tile filter in this store (no annotated slides, or it is off). ")
                 + ("Nuclei per mm<sup>2</sup> of tissue of the tiles the nuclei pass measured, and the densest "
                    "tile with its segmented nuclei." if not nuclei.empty else "Nuclei are off in this store."))]
    for pid, why in pick_patients(preds, set(slides_of.index.astype(str)), n_patients):
        slide_id = slides_of[pid][0]
        body.append(f"<h3>{html.escape(pid)} &middot; {html.escape(slide_id)}</h3>"
                    + (para(html.escape(why)) if why else ""))
        if not tumour.empty and slide_id in set(tumour["bag_id"]):
            t = store.read_bag(TUMOUR, slide_id, columns=["scale", "x", "y", "size_l0", "tumour_probability"])
            t = t[t["scale"] == "tile"]
            boxes = pd.DataFrame({"x": t["x"], "y": t["y"], "size": t["size_l0"].astype(float),
                                  "value": t["tumour_probability"].astype(float)})
            low = boxes[boxes["value"] < threshold]
            body.append(_slide_figure(boxes=boxes, uri=uris.get(slide_id), title=f"{slide_id}: tumour probability",
                                      label="tumour probability", cmap="RdYlBu_r", marks=low.head(200),
                                      attrs={"kind": "tumour", "slide": slide_id, "patient": pid,
                                             "kept": int((boxes["value"] >= threshold).sum()), "tiles": len(boxes)}))
        if not nuclei.empty and slide_id in set(nuclei["bag_id"]):
            body += _nuclei_figures(store, slide_id, pid, uris.get(slide_id))
    return body


def _nuclei_figures(store: FeatureStore, slide_id: str, pid: str, uri: str | None) -> list[str]:
    n = store.read_bag(NUCLEI, slide_id, columns=["x", "y", "size_l0", "mpp_l0", "nuclei_mpp", "density_per_mm2",
                                                  "n_nuclei", "nucleus_x", "nucleus_y"])
    boxes = pd.DataFrame({"x": n["x"], "y": n["y"], "size": n["size_l0"].astype(float),
                          "value": n["density_per_mm2"].astype(float)})
    top = n.iloc[[int(np.nanargmax(boxes["value"].to_numpy()))]] if boxes["value"].notna().any() else n.head(1)
    out = [_slide_figure(boxes=boxes.dropna(subset=["value"]), uri=uri, title=f"{slide_id}: nuclei per mm2",
                         label="nuclei per mm² of tissue", cmap="viridis",
                         marks=pd.DataFrame({"x": top["x"], "y": top["y"], "size": top["size_l0"].astype(float)}),
                         attrs={"kind": "nuclei", "slide": slide_id, "patient": pid, "tiles": len(boxes)})]
    r = top.iloc[0]
    size, x0, y0 = int(r["size_l0"]), int(r["x"]), int(r["y"])
    px = min(ZOOM_PX, max(16, int(round(size * float(r["mpp_l0"]) / float(r["nuclei_mpp"])))))
    rgb = read_region(uri, x=x0, y=y0, size_l0=size, out_px=px)
    if rgb is None:
        return out + [para(f"The densest tile of {html.escape(slide_id)} could not be read for the zoom panel.")]
    from mmray.report.render import new_figure

    fig = new_figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(rgb, extent=(0, px, px, 0))
    cx = (np.asarray(r["nucleus_x"], float) - x0) / size * px
    cy = (np.asarray(r["nucleus_y"], float) - y0) / size * px
    ax.scatter(cx, cy, s=14, facecolors="none", edgecolors="lime", linewidths=0.8)
    title = f"{slide_id}: densest tile, {len(cx)} nuclei ({float(r['density_per_mm2']):.0f} per mm²)"
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return out + [figure(fig, alt=title, caption=html.escape(title) + f" at ({x0}, {y0}), level 0.",
                         attrs={"kind": "nuclei-zoom", "slide": slide_id, "patient": pid, "nuclei": len(cx)})]
