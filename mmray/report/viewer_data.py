"""What the slide viewer shows: patients and slides of a store, slide files, and overlays as QuPath GeoJSON.

Every overlay is a GeoJSON ``FeatureCollection`` in level-0 pixel
coordinates of its slide, in the form QuPath writes and reads (File >
Import objects): each ``Feature`` has a ``Polygon`` geometry (a closed ring),
an ``id``, and ``properties`` with ``objectType`` (``tile`` for per-tile
values, ``annotation`` for marked locations), ``classification`` (``name``,
``color`` as ``[r, g, b]``) and ``measurements`` (``{name: number}``).

Overlays (each only where the store has its data):

* ``tissue``: the tissue tiles the WSI stage kept (``wsi_tiles``, 256-px scale);
* ``tumour``: per-tile ``tumour_probability`` (a column of ``wsi_tiles`` or the
  ``wsi_tumour`` group);
* ``nuclei``: nuclei per mm^2 of tissue in each segmented tile (``wsi_nuclei``'s ``density_per_mm2``);
* ``attention``: the MIL attention the newest train run saved (``attention.parquet``);
* ``extremum``: HEEC's important extremum features traced to the tile or
  region that gave each value (importances + ``wsi_patient`` coordinates),
  with the features and their summed gain per location.

Slide files are found through the store's records (the cohort manifest with
the pseudonym key, else the ``wsi_tiles`` lineage: the report's
:func:`mmray.report.inputs.slide_uris`); only slide and patient ids as the
store holds them (pseudonyms with a key) ever reach the browser.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmray.store import FeatureStore
from mmray.store.manifest import schema_of

log = logging.getLogger(__name__)
TILES, PATIENTS, NUCLEI, TUMOUR = "wsi_tiles", "wsi_patient", "wsi_nuclei", "wsi_tumour"
TUMOUR_COLUMN = "tumour_probability"
OVERLAYS = {  # kind -> (label, classification colour)
    "tissue": ("Tissue", (60, 160, 60)),
    "tumour": ("Tumour probability", (200, 0, 0)),
    "nuclei": ("Nucleus density", (0, 90, 200)),
    "attention": ("MIL attention", (240, 200, 0)),
    "extremum": ("HEEC extremum locations", (0, 220, 220)),
}


def polygon(x: float, y: float, w: float, h: float) -> list[list[list[float]]]:
    """A closed counter-clockwise ring ``[[x, y], ...]`` of an axis-aligned box (GeoJSON Polygon coordinates)."""
    x, y, w, h = float(x), float(y), float(w), float(h)
    return [[[x, y], [x, y + h], [x + w, y + h], [x + w, y], [x, y]]]


def feature(box, *, kind: str, object_type: str, measurements: dict, name: str | None = None,
            extra: dict | None = None) -> dict:
    label, colour = OVERLAYS[kind]
    props = {"objectType": object_type, "classification": {"name": name or label, "color": list(colour)},
             "measurements": {k: float(v) for k, v in measurements.items()}}
    props.update(extra or {})
    return {"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}:{box}:{name}")),
            "geometry": {"type": "Polygon", "coordinates": polygon(*box)}, "properties": props}


def collection(features: list[dict], **meta) -> dict:
    return {"type": "FeatureCollection", "features": features, **({"mmray": meta} if meta else {})}


@dataclass
class ViewerData:
    """A store's slides, files and overlays (module doc); ``uris`` stays on the server."""

    store: FeatureStore
    uris: dict[str, str] = field(default_factory=dict)
    train_run: str | None = None

    def __post_init__(self):
        self._groups = set(self.store.groups())
        self._run = None

    # ------------------------------------------------------------ slides
    def slides(self) -> pd.DataFrame:
        """``patient_id, slide_id`` of every slide with tiles in the store."""
        if TILES not in self._groups:
            return pd.DataFrame(columns=["patient_id", "slide_id"])
        bags = self.store.bags(TILES)
        if "patient_id" not in bags.columns:
            bags = bags.assign(patient_id=bags["bag_id"])
        out = bags.rename(columns={"bag_id": "slide_id"})[["patient_id", "slide_id"]].astype(str)
        return out.drop_duplicates().sort_values(["patient_id", "slide_id"]).reset_index(drop=True)

    def patients(self) -> list[dict]:
        s = self.slides()
        return [{"patient_id": pid, "slides": [{"slide_id": sid, "readable": sid in self.uris}
                                               for sid in g["slide_id"]]}
                for pid, g in s.groupby("patient_id", sort=True)]

    def overlays(self) -> dict[str, bool]:
        """Which overlays this store can draw (for some slide)."""
        run = self.run()
        names = set(schema_of(self.store.manifest(TILES)).names) if TILES in self._groups else set()
        return {"tissue": TILES in self._groups, "tumour": TUMOUR_COLUMN in names or TUMOUR in self._groups,
                "nuclei": NUCLEI in self._groups,
                "attention": run is not None and run.attention is not None and not run.attention.empty,
                "extremum": run is not None and run.importances is not None and not run.importances.empty
                and PATIENTS in self._groups}

    def run(self):
        if self._run is None:
            from mmray.report.document import InputMissing
            from mmray.report.inputs import load_train_run

            try:
                self._run = load_train_run(self.store, self.train_run)
            except InputMissing:
                self._run = False
        return self._run or None

    def tiles(self, slide_id: str, columns=("scale", "x", "y", "size_l0")) -> pd.DataFrame:
        names = set(schema_of(self.store.manifest(TILES)).names)
        cols = [c for c in columns if c in names]
        rows = self.store.read_bag(TILES, slide_id, columns=cols)
        if "size_l0" not in rows:
            rows["size_l0"] = rows["tile_px"] if "tile_px" in rows else 256.0
        if "scale" not in rows:
            rows["scale"] = "tile"
        return rows

    # ------------------------------------------------------------ overlays
    def overlay(self, slide_id: str, kind: str) -> dict:
        """The overlay ``kind`` of one slide as a QuPath FeatureCollection (module doc)."""
        if kind not in OVERLAYS:
            raise KeyError(kind)
        feats = getattr(self, f"_{kind}")(slide_id)
        values = [f["properties"]["measurements"].get("value") for f in feats]
        values = [v for v in values if v is not None and np.isfinite(v)]
        return collection(feats, slide_id=slide_id, overlay=kind, label=OVERLAYS[kind][0],
                          min=min(values) if values else None, max=max(values) if values else None)

    def _tile_features(self, frame: pd.DataFrame, kind: str, measure: str, **extra) -> list[dict]:
        out = []
        for r in frame.itertuples(index=False):
            v = float(getattr(r, "value"))
            if not np.isfinite(v):
                continue
            box = (r.x, r.y, r.size_l0, r.size_l0)
            out.append(feature(box, kind=kind, object_type="tile", measurements={"value": v, measure: v}, **extra))
        return out

    def _tissue(self, slide_id: str) -> list[dict]:
        t = self.tiles(slide_id, ("scale", "x", "y", "size_l0", "tile_px", "tissue_fraction"))
        t = t[t["scale"] == "tile"]
        value = t["tissue_fraction"] if "tissue_fraction" in t else pd.Series(1.0, index=t.index)
        return self._tile_features(t.assign(value=value.astype(float)), "tissue", "tissue fraction")

    def _tumour(self, slide_id: str) -> list[dict]:
        names = set(schema_of(self.store.manifest(TILES)).names)
        if TUMOUR_COLUMN in names:
            t = self.tiles(slide_id, ("scale", "x", "y", "size_l0", "tile_px", TUMOUR_COLUMN))
        elif TUMOUR in self._groups:
            t = self.tiles(slide_id, ("scale", "x", "y", "size_l0", "tile_px"))
            tum = self.store.read_bag(TUMOUR, slide_id)
            keys = [c for c in ("scale", "x", "y") if c in tum.columns]
            t = t.merge(tum[keys + [TUMOUR_COLUMN]], on=keys, how="inner")
        else:
            return []
        t = t[t["scale"] == "tile"]
        return self._tile_features(t.assign(value=t[TUMOUR_COLUMN].astype(float)), "tumour", "tumour probability")

    def _nuclei(self, slide_id: str) -> list[dict]:
        if NUCLEI not in self._groups:
            return []
        try:
            n = self.store.read_bag(NUCLEI, slide_id)
        except Exception:  # noqa: BLE001  a slide without nuclei rows (no segmented tile) shows nothing
            return []
        if n.empty:
            return []
        size = n["size_l0"].astype(float) if "size_l0" in n else pd.Series(256.0, index=n.index)
        if "density_per_mm2" in n:  # the nuclei stage's own figure: nuclei per mm^2 of tissue in the tile
            density = n["density_per_mm2"].astype(float)
        else:  # per mm^2 of the tile
            count = n["nucleus_x"].map(lambda v: 0 if v is None else len(v)) if "nucleus_x" in n else n["n_nuclei"]
            mpp = next((n[c].astype(float) for c in ("mpp_l0", "mpp") if c in n), 0.5)
            density = count / ((size * mpp / 1000.0) ** 2)
        frame = pd.DataFrame({"x": n["x"], "y": n["y"], "size_l0": size, "value": density})
        return self._tile_features(frame, "nuclei", "nuclei per mm^2")

    def _attention(self, slide_id: str) -> list[dict]:
        run = self.run()
        if run is None or run.attention is None or run.attention.empty:
            return []
        a = run.attention[run.attention["slide_id"].astype(str) == slide_id]
        if a.empty:
            return []
        from mmray.report.performance import KEY, best_row, of_row

        keys = set(map(tuple, a[list(KEY)].drop_duplicates().to_numpy()))
        row = best_row(run.summary, where=lambda s: [tuple(k) in keys for k in s[list(KEY)].to_numpy()])
        if row is not None:
            a = of_row(a, row)
        size = a["size_l0"].astype(float) if "size_l0" in a else pd.Series(256.0, index=a.index)
        frame = pd.DataFrame({"x": a["x"], "y": a["y"], "size_l0": size, "value": a["attention"].astype(float)})
        frame = frame.groupby(["x", "y", "size_l0"], as_index=False)["value"].mean()
        return self._tile_features(frame, "attention", "attention")

    def _extremum(self, slide_id: str) -> list[dict]:
        run = self.run()
        if run is None or PATIENTS not in self._groups:
            return []
        from mmray.models.heec import default_feature_of, trace_importances
        from mmray.report.document import InputMissing
        from mmray.report.slide_sections import box_sizes, extremum_coords, heec_gain

        try:
            gain, _ = heec_gain(run)
        except InputMissing:
            return []
        located = [c for c in gain.index if default_feature_of(c) and gain[c] > 0][:20]
        if not located:
            return []
        coords = extremum_coords(self.store, located)
        traced = trace_importances(gain[located], coords[coords["slide_id"] == slide_id], top_k=20)
        if traced.empty:
            return []
        sizes = box_sizes(self.store, slide_id)
        out = []
        for (pid, scale, x, y), g in traced.groupby(["patient_id", "scale", "x", "y"], sort=True):
            size = float(sizes.get(scale, 256.0))
            feats = sorted(g["feature"].astype(str))
            out.append(feature((x, y, size, size), kind="extremum", object_type="annotation",
                               measurements={"value": float(g["importance"].sum()), "n features": len(feats)},
                               name=f"extremum {scale}", extra={"features": feats, "patient_id": str(pid),
                                                                "scale": str(scale)}))
        return out
