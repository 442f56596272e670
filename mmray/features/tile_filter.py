"""Tumour-tile filter learned from a few annotations: positive-unlabeled learning on tile features.

Pathologists outline tumour on a few slides (QuPath GeoJSON, manifest column
``annotation``).  Tiles inside an outline are *labelled positives*; every
other tile of the cohort, on annotated slides or not, is *unlabeled* (tumour
or not).  Under the "selected completely at random" assumption (the
annotated slides are a random few), Elkan & Noto (KDD 2008) show that a
classifier of labelled-vs-unlabeled ``g(x) = P(s=1 | x)`` is the tumour
probability times a constant ``c = P(s=1 | y=1)``, which they estimate as
the mean of ``g`` on held-out labelled positives; ``P(y=1 | x) = g(x) / c``.
:class:`ElkanNoto` does exactly that over a scikit-learn classifier (written
here rather than pulearn's ``ElkanotoPuClassifier``, which holds out a random
share of *all* rows: with few annotated tiles that share can hold no
positive, and it raises); the classifier is a pipeline over the tile
embedding (standardised, PCA) and the tile's nucleus features (median
imputation with missing indicators: nuclei are measured on a sample of
tiles), ending in a logistic regression (or gradient boosting).

Fold safety (:func:`fit_folds`): the annotated slides, grouped by patient,
are split into folds; the tiles of a fold's annotated slides are scored by a
model fitted without any tile of those slides, so no tile's probability comes
from a fit that saw its own slide's annotation.  Unannotated slides carry no
label and get the mean of the fold models' probabilities.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mmray.errors import InputError

ESTIMATORS = ("logistic", "boosting")


@dataclass(frozen=True)
class TileFilterConfig:
    """The ``wsi.tile_filter`` section."""

    enabled: bool = True  # learn the filter when some slides have annotations (none: off, and said so)
    threshold: float = 0.5  # aggregates and MIL bags keep tiles with tumour_probability >= threshold
    classes: tuple[str, ...] = ("tumor", "tumour")  # annotation classes that mark tumour (any case; empty: all)
    positive_fraction: float = 0.5  # a tile is a labelled positive when this much of it lies inside the outline
    folds: int = 5  # annotated slides (by patient) are scored out of fold
    estimator: Literal["logistic", "boosting"] = "logistic"
    embedding_components: int = 32  # PCA components of the tile embedding (fitted with the classifier)
    hold_out_ratio: float = 0.1  # training rows held out to estimate c = P(labelled | tumour)
    min_positive_tiles: int = 20  # fewer labelled tiles than this: no filter (too few to learn from)
    seed: int = 0

    def validate(self):
        if not 0 <= self.threshold <= 1:
            yield ("threshold", f"must be within [0, 1], got {self.threshold}")
        if not 0 < self.positive_fraction <= 1:
            yield ("positive_fraction", f"must be within (0, 1], got {self.positive_fraction}")
        if self.folds < 2:
            yield ("folds", f"must be at least 2, got {self.folds}")
        if self.estimator not in ESTIMATORS:
            yield ("estimator", f"must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.embedding_components < 1 or not 0 < self.hold_out_ratio < 0.5 or self.min_positive_tiles < 1:
            yield ("", "embedding_components and min_positive_tiles must be at least 1, hold_out_ratio within "
                       "(0, 0.5)")

    def key(self) -> dict:
        """What makes two filters the same (resume compares it); the threshold only selects tiles."""
        out = dataclasses.asdict(self)
        for k in ("enabled", "threshold"):
            out.pop(k)
        out["classes"] = list(out["classes"])
        return out


# ------------------------------------------------------------------ annotations
def read_annotation(text: str, *, classes=("tumor", "tumour"), name: str = "annotation") -> list[list[np.ndarray]]:
    """Tumour polygons of a GeoJSON annotation (QuPath export: FeatureCollection, Feature or a list of
    features): ``[[outer ring (K, 2) x/y level-0 pixels, hole rings...], ...]``.

    A feature counts when its ``classification`` (QuPath: ``{"name": ...}``; or a string, or a
    ``classification``/``name`` property) is one of ``classes`` (case-insensitive; empty: every
    feature).  Points and lines are ignored.  Raises :class:`InputError` naming ``name`` for text that is
    not GeoJSON.
    """
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InputError(f"{name}: not JSON ({e}); export the annotation from QuPath as GeoJSON", item=name) from e
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and doc.get("type") in ("Polygon", "MultiPolygon"):
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    elif isinstance(doc, list):
        features = doc
    else:
        raise InputError(f"{name}: not a GeoJSON FeatureCollection, Feature or list of features "
                         f"(top level: {type(doc).__name__} {str(doc)[:60]!r})", item=name)
    wanted = {c.lower() for c in classes}
    polygons = []
    for f in features:
        if not isinstance(f, dict):
            continue
        props = f.get("properties") or {}
        cls = props.get("classification", props.get("name"))
        cls = cls.get("name") if isinstance(cls, dict) else cls
        if wanted and (cls is None or str(cls).lower() not in wanted):
            continue
        geom = f.get("geometry") or {}
        try:
            if geom.get("type") == "Polygon":
                polygons.append([np.asarray(r, float)[:, :2] for r in geom["coordinates"]])
            elif geom.get("type") == "MultiPolygon":
                polygons += [[np.asarray(r, float)[:, :2] for r in poly] for poly in geom["coordinates"]]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise InputError(f"{name}: a {geom.get('type')} without valid coordinates ({e})", item=name) from e
    return polygons


def annotated_fraction(polygons: list[list[np.ndarray]], *, x: np.ndarray, y: np.ndarray, size: np.ndarray,
                       cells_per_tile: int = 8) -> np.ndarray:
    """(N,) fraction of each square (level-0 corner ``x, y``, side ``size``) inside the polygons (holes
    excluded, overlapping polygons counted once), on a raster of ``cells_per_tile`` cells per side."""
    from PIL import Image, ImageDraw

    from mmray.features.tissue import box_fractions

    x, y, size = (np.asarray(v, float) for v in (x, y, size))
    if not len(x) or not polygons:
        return np.zeros(len(x))
    cell = max(float(np.min(size)) / cells_per_tile, 1.0)
    w = int(np.ceil(max((x + size).max(), max(r[:, 0].max() for p in polygons for r in p)) / cell)) + 1
    h = int(np.ceil(max((y + size).max(), max(r[:, 1].max() for p in polygons for r in p)) / cell)) + 1
    union = np.zeros((h, w), bool)
    for poly in polygons:  # PIL's scanline fill: skimage.draw.polygon is O(area x vertices), far too slow here
        inside = np.zeros((h, w), bool)
        for ring in poly:  # even-odd: a hole toggles its cells back off
            canvas = Image.new("1", (w, h), 0)
            ImageDraw.Draw(canvas).polygon([(float(px) - 0.5, float(py) - 0.5) for px, py in ring / cell], fill=1)
            inside ^= np.asarray(canvas, bool)
        union |= inside
    return box_fractions(union, x0=x / cell, y0=y / cell, size=float(np.median(size)) / cell)


# ------------------------------------------------------------------ the classifier
class ElkanNoto:
    """Elkan & Noto's PU classifier: ``estimator`` fitted to labelled (1) vs unlabeled (0) rows, except a
    stratified ``hold_out_ratio`` of each on which ``c`` = the mean predicted ``P(s=1 | x)`` of the held-out
    labelled rows; ``predict_proba`` is ``P(s=1 | x) / c`` clipped to [0, 1]."""

    def __init__(self, estimator, *, hold_out_ratio: float = 0.1, random_state: int = 0):
        self.estimator, self.hold_out_ratio, self.random_state = estimator, hold_out_ratio, random_state
        self.c = 1.0

    def fit(self, X: np.ndarray, s: np.ndarray) -> ElkanNoto:
        s = np.asarray(s).astype(int)
        pos, unl = np.flatnonzero(s == 1), np.flatnonzero(s == 0)
        if len(pos) < 2 or len(unl) < 1:
            raise InputError(f"tile filter: {len(pos)} labelled and {len(unl)} unlabeled tiles; positive-unlabeled "
                             f"learning needs at least 2 labelled tiles and some unlabeled ones")
        rng = np.random.default_rng(self.random_state)
        held = [rng.choice(rows, max(1, int(round(self.hold_out_ratio * len(rows)))), replace=False)
                for rows in (pos, unl)]
        train = np.setdiff1d(np.arange(len(s)), np.concatenate(held))
        self.estimator.fit(X[train], s[train])
        c = float(np.mean(self.estimator.predict_proba(X[held[0]])[:, 1]))
        if not np.isfinite(c) or c <= 0:
            raise InputError(f"tile filter: the held-out annotated tiles get P(labelled) {c}; cannot scale to "
                             f"tumour probabilities (annotate more slides)")
        self.c = c
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 2): P(not tumour), P(tumour)."""
        p = np.clip(self.estimator.predict_proba(X)[:, 1] / self.c, 0.0, 1.0)
        return np.column_stack([1.0 - p, p])


def make_classifier(cfg: TileFilterConfig, *, n_embedding: int, n_nuclei: int) -> ElkanNoto:
    """The Elkan-Noto PU classifier over the feature pipeline of the module docstring."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    parts = []
    if n_embedding:
        k = min(cfg.embedding_components, n_embedding)
        parts.append(("embedding", Pipeline([("scale", StandardScaler()),
                                             ("pca", PCA(n_components=k, random_state=cfg.seed))]),
                      list(range(n_embedding))))
    if n_nuclei:
        parts.append(("nuclei", Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True,
                                                                   keep_empty_features=True)),
                                          ("scale", StandardScaler())]),
                      list(range(n_embedding, n_embedding + n_nuclei))))
    if cfg.estimator == "boosting":
        head = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=cfg.seed)
    else:
        head = LogisticRegression(C=0.5, max_iter=2000)
    model = Pipeline([("features", ColumnTransformer(parts)), ("head", head)])
    return ElkanNoto(model, hold_out_ratio=cfg.hold_out_ratio, random_state=cfg.seed)


@dataclass
class FoldModels:
    """The classifiers of :func:`fit_folds`: one per fold of the annotated slides."""

    models: list
    fold_of_slide: dict[str, int]  # annotated slide -> its fold
    c: list[float] = field(default_factory=list)  # Elkan-Noto's P(labelled | tumour) per fold

    @property
    def n_folds(self) -> int:
        return len(self.models)

    def predict(self, X: np.ndarray, *, slide: np.ndarray) -> np.ndarray:
        """(N,) P(tumour | tile) within [0, 1]: an annotated slide's rows by the model of its fold (fitted
        without that slide), every other row by the mean of the fold models."""
        slide = np.asarray(slide).astype(str)
        fold = np.array([self.fold_of_slide.get(s, -1) for s in slide])
        prob = np.zeros(len(slide))
        for k, model in enumerate(self.models):
            rows = np.flatnonzero((fold == k) | (fold < 0))
            if not len(rows):
                continue
            p = np.clip(model.predict_proba(X[rows])[:, 1], 0.0, 1.0)
            own = fold[rows] == k
            prob[rows[own]] = p[own]
            prob[rows[~own]] += p[~own] / len(self.models)
        return prob


def _fold_of_slides(annotated: list[str], patient_of: dict[str, str], n_folds: int, seed: int) -> dict[str, int]:
    patients = sorted({patient_of[s] for s in annotated})
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of_patient = {patients[i]: k % n_folds for k, i in enumerate(order)}
    return {s: fold_of_patient[patient_of[s]] for s in annotated}


def fit_folds(X: np.ndarray, labelled: np.ndarray, *, slide: np.ndarray, patient_of: dict[str, str],
              annotated: list[str], cfg: TileFilterConfig, n_embedding: int,
              on_fit: Callable[[int, np.ndarray], None] | None = None) -> FoldModels:
    """Fit one PU classifier per fold on the rows of ``X`` (N, n_embedding + n_nuclei).

    ``labelled`` (N,) bool: the row lies inside its slide's tumour annotation; ``slide`` (N,) each row's slide;
    ``annotated``: the slides with an annotation (their other rows are unlabeled); ``patient_of``: slide ->
    patient (a patient's slides share a fold).  Fold ``k``'s model is fitted on every row except those of
    fold ``k``'s annotated slides; ``on_fit(k, rows)`` is told the row indices it is fitted on.
    """
    slide = np.asarray(slide).astype(str)
    labelled = np.asarray(labelled, bool)
    n_patients = len({patient_of[s] for s in annotated})
    n_folds = min(cfg.folds, n_patients)
    if n_folds < 2:
        raise InputError(f"tile filter: annotations on {n_patients} patient(s); out-of-fold scoring needs at least "
                         f"2 (annotate slides of more patients, or set wsi.tile_filter.enabled=false)")
    fold_of = _fold_of_slides(annotated, patient_of, n_folds, cfg.seed)
    row_fold = np.array([fold_of.get(s, -1) for s in slide])
    models, cs = [], []
    for k in range(n_folds):
        train = np.flatnonzero(row_fold != k)
        if not labelled[train].any():
            raise InputError(f"tile filter: fold {k} has no labelled tile to learn from; annotate more slides")
        if on_fit is not None:
            on_fit(k, train)
        model = make_classifier(cfg, n_embedding=n_embedding, n_nuclei=X.shape[1] - n_embedding)
        model.fit(X[train], labelled[train].astype(int))
        models.append(model)
        cs.append(float(model.c))
    return FoldModels(models=models, fold_of_slide=fold_of, c=cs)
