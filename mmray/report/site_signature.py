"""Site signature: can the tissue source site be predicted from slide features?

Slides from one hospital share staining, scanner and preparation; a model
that can tell sites apart from slide features can learn the site instead of
the biology, and its cross-validated scores mean little on another site's
slides (Howard et al., Nat Commun 2021).  The check, part of the leakage
findings: the out-of-fold ROC AUC (one-vs-rest, macro over sites; folds
stratified by site and grouped by patient) of a multinomial logistic
regression on standardised, PCA-reduced slide features, for

* ``stored``: the slide features models see (``wsi_slide`` tile means and
  the ``wsi_nuclei_slide`` means), after stain normalisation when it is on;
* ``before`` / ``after``: with stain normalisation on, the mean embedding of
  the same probe tiles of each slide as read and as normalised (the encoder
  embeds the probe tiles both ways, :mod:`mmray.features.tile_pipeline`),
  so the two figures differ only by the normalisation.

An AUC near 0.5 means the sites are indistinguishable; ``auc_threshold``
flags the features.  Site labels come from the clinical table's
``site_column`` (TCGA: ``tissue_source_site``) or, without it, from the
tissue source site code of TCGA patient barcodes; sites with fewer than
``min_slides_per_site`` slides are left out.  Site codes are written as
``site 1..K`` (by size), never as raw codes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray.report import render

log = logging.getLogger(__name__)
_TCGA = re.compile(r"^TCGA-([A-Z0-9]{2})-", re.IGNORECASE)
NAME = "site_signature"


@dataclass(frozen=True)
class SiteSignatureConfig:
    """The ``wsi.site_signature`` section."""

    enabled: bool = True
    site_column: str = "tissue_source_site"  # clinical column naming each patient's site
    folds: int = 5
    pca_components: int = 16
    min_slides: int = 20  # fewer labelled slides: no check
    min_slides_per_site: int = 3
    auc_threshold: float = 0.7  # at or above: the features carry a site signature
    seed: int = 0

    def validate(self):
        if self.folds < 2 or self.pca_components < 1 or self.min_slides_per_site < 2:
            yield ("", "folds and min_slides_per_site must be at least 2, pca_components at least 1")
        if not 0.5 < self.auc_threshold <= 1:
            yield ("auc_threshold", f"must be within (0.5, 1], got {self.auc_threshold}")


def oof_site_auc(X: np.ndarray, site: np.ndarray, *, groups: np.ndarray, cfg: SiteSignatureConfig) -> float | None:
    """Out-of-fold macro one-vs-rest ROC AUC of predicting ``site`` from (N, F) ``X`` (NaN: column median of
    the training fold); None when there are fewer than two sites."""
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, y = np.unique(np.asarray(site).astype(str), return_inverse=True)
    if len(classes) < 2:
        return None
    n_splits = min(cfg.folds, int(np.bincount(y).min()))
    if n_splits < 2:
        return None
    proba = np.zeros((len(y), len(classes)))
    split = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.seed)
    for train, test in split.split(X, y, groups):
        k = max(1, min(cfg.pca_components, len(train) - 1, X.shape[1]))
        model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              PCA(n_components=k, random_state=cfg.seed), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(X[train], y[train])
        proba[np.ix_(test, model.classes_)] = model.predict_proba(X[test])
    if len(classes) == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def site_labels(ctx, cfg: SiteSignatureConfig) -> tuple[dict[str, str], str]:
    """``({stored patient id: site}, where from)``: the clinical column, else TCGA barcodes of the manifest."""
    from mmray.features.table_io import read_any_table

    cohort = ctx.cohort
    path = cohort.part_path("clinical") if cohort.spec.clinical else None
    if path:
        try:
            frame = read_any_table(path, what="clinical", fmt=cohort.spec.clinical.format).frame
        except Exception as e:  # noqa: BLE001  the check is optional: say why it is skipped
            log.warning("site signature: cannot read the clinical table: %s", type(e).__name__)
            frame = None
        if frame is not None and cfg.site_column in frame.columns:
            ids, sites = frame[cohort.spec.clinical.id_column].astype(str).str.strip(), frame[cfg.site_column]
            return ({ctx.patient_key(i): str(s).strip() for i, s in zip(ids, sites) if str(s).strip()},
                    f"clinical column {cfg.site_column!r}")
    raw = cohort.manifest()["patient_id"].astype(str).unique()
    found = {ctx.patient_key(p): m.group(1).upper() for p in raw if (m := _TCGA.match(p))}
    return found, "TCGA barcodes (tissue source site code)"


def _slide_features(store) -> pd.DataFrame | None:
    """One row per slide: the stored tile-mean embedding and nucleus means."""
    from mmray.ingest.wsi_aggregates import SLIDES, read_arrow
    from mmray.ingest.wsi_nuclei import NUCLEI_SLIDES

    if store.latest(SLIDES) is None:
        return None
    table = read_arrow(store, SLIDES)
    cols = ["slide_id", "patient_id"] + [c for c in table.column_names if c.startswith("tile_mean_")]
    out = table.select(cols).to_pandas()
    if store.latest(NUCLEI_SLIDES) is not None:
        nuc = store.read_table(NUCLEI_SLIDES)
        keep = ["slide_id"] + [c for c in nuc.columns if c.endswith("_mean") or c == "nuclei_per_mm2"]
        out = out.merge(nuc[keep].add_prefix("nuclei_").rename(columns={"nuclei_slide_id": "slide_id"}),
                        on="slide_id", how="left")
    return out


def _probe_features(store) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(before, after)``: per slide the mean raw and normalised embedding of its probe tiles."""
    from mmray.ingest.wsi_aggregates import TILES, read_arrow
    from mmray.store.manifest import schema_of

    if "embedding_raw" not in schema_of(store.manifest(TILES)).names:
        return None
    t = read_arrow(store, TILES, columns=["slide_id", "patient_id", "embedding", "embedding_raw"])
    t = t.filter(t["embedding_raw"].is_valid()).to_pandas()
    if t.empty:
        return None
    out = []
    for col in ("embedding_raw", "embedding"):
        mean = t.groupby("slide_id")[col].apply(lambda v: np.mean(np.stack(v.to_numpy()), axis=0))
        frame = pd.DataFrame(np.stack(mean.to_numpy()), index=mean.index).add_prefix("e")
        frame.insert(0, "patient_id", t.groupby("slide_id")["patient_id"].first())
        out.append(frame.reset_index())
    return out[0], out[1]


def site_signature_report(store, sites: dict[str, str], *, cfg: SiteSignatureConfig, source: str,
                          stain: dict | None) -> dict:
    """The check (module docstring) on the store's slide features; ``sites``: stored patient id -> site."""
    rep = {"report": NAME, "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(), "sites_from": source,
           "stain_method": (stain or {}).get("key", {}).get("method", "none"), "threshold": cfg.auc_threshold,
           "checks": [], "notes": []}
    stored = _slide_features(store)
    sets = [("stored", "slide features models see (tile-mean embedding, nucleus means)", stored)]
    probes = _probe_features(store) if stain else None
    if probes is not None:
        sets += [("before", "probe tiles as read (mean embedding)", probes[0]),
                 ("after", "the same probe tiles stain-normalised (mean embedding)", probes[1])]
    elif stain:
        rep["notes"].append("no probe tiles in wsi_tiles (stain.probe_tiles: 0): no before/after figures")
    for name, what, frame in sets:
        if frame is None or frame.empty:
            continue
        frame = frame.assign(site=frame["patient_id"].map(sites)).dropna(subset=["site"])
        counts = frame["site"].value_counts()
        small = counts[counts < cfg.min_slides_per_site]
        frame = frame[~frame["site"].isin(small.index)]
        row = {"features": name, "what": what, "n_slides": len(frame), "n_sites": int(frame["site"].nunique()),
               "n_sites_left_out": len(small), "auc": None}
        if len(frame) >= cfg.min_slides and row["n_sites"] >= 2:
            X = frame.drop(columns=["slide_id", "patient_id", "site"]).to_numpy(np.float64)
            row["auc"] = oof_site_auc(X, frame["site"].to_numpy(), groups=frame["patient_id"].to_numpy(), cfg=cfg)
        row["flagged"] = row["auc"] is not None and row["auc"] >= cfg.auc_threshold
        rep["checks"].append(row)
    order = pd.Series(list(sites.values())).value_counts()
    rep["site_sizes"] = {f"site {i + 1}": int(n) for i, n in enumerate(order.to_numpy())}
    if not any(c["auc"] is not None for c in rep["checks"]):
        rep["notes"].append(f"too few labelled slides (need {cfg.min_slides} with at least 2 sites of "
                            f"{cfg.min_slides_per_site}+ slides) for the site-signature check")
    return rep


def site_signature(ctx, *, report) -> dict | None:
    """Run the check after WSI ingest and store it as the ``site_signature`` report; a note in ``report``."""
    cfg = getattr(ctx.config, "site_signature", SiteSignatureConfig())
    if not cfg.enabled:
        return None
    from mmray.ingest.wsi import TILES

    sites, source = site_labels(ctx, cfg)
    man = ctx.store.manifest(TILES) if ctx.store.latest(TILES) else {"params": {}}
    rep = site_signature_report(ctx.store, sites, cfg=cfg, source=source, stain=man["params"].get("stain"))
    render.write_report(ctx.store, NAME, rep, render.page("Site signature", site_signature_sections(rep)))
    figures = ", ".join(f"{c['features']} {c['auc']:.3f}" for c in rep["checks"] if c["auc"] is not None)
    report.notes.append(f"site signature (out-of-fold AUC of the tissue source site from slide features, "
                        f"stain {rep['stain_method']}): {figures or 'not computed: ' + '; '.join(rep['notes'])}")
    return rep


def site_signature_sections(rep: dict) -> list[str]:
    """HTML parts: what was checked, the AUC table, notes."""
    sizes = ", ".join(f"{k}: {v}" for k, v in rep.get("site_sizes", {}).items()) or "none"
    rows = [{**c, "auc": c["auc"]} for c in rep["checks"]]
    body = [f"<h3>Site signature</h3><p>Out-of-fold ROC AUC of predicting the tissue source site from slide "
            f"features (multinomial logistic regression on PCA components, folds by site and patient; 0.5: "
            f"indistinguishable; flagged at {rep['threshold']}). Stain normalisation: "
            f"<b>{render.fmt(rep['stain_method'])}</b>. Sites from {render.fmt(rep['sites_from'])} ({sizes}).</p>",
            render.table(rows, [("features", "features"), ("what", "what"), ("n_slides", "slides"),
                                ("n_sites", "sites"), ("auc", "site AUC")], mark=lambda r: r["flagged"])]
    body += [f"<p>{render.fmt(n)}</p>" for n in rep.get("notes", [])]
    return body


def stored_sections(store) -> list[str]:
    """The report's site-signature part from the store (a note when WSI ingest has not run the check)."""
    from mmray.errors import StoreError

    try:
        return site_signature_sections(render.read_report(store, NAME))
    except StoreError:
        return ["<h3>Site signature</h3><p>No site-signature check in this store (it runs at the end of WSI "
                "ingest: <code>mmray ingest --modalities wsi</code>).</p>"]
