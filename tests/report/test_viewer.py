"""The slide viewer: HTTP routes, QuPath GeoJSON, no slide path sent, and a real headless Chromium session."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chromium import Chromium
from PIL import Image

from mmray.features.tissue import TissueParams, box_fractions, detect_tissue, read_thumbnail
from mmray.report.viewer import viewer_server
from mmray.report.viewer_data import ViewerData
from mmray.store import FeatureStore
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slides import write_slides

SCREENSHOT = os.environ.get("MMRAY_VIEWER_SCREENSHOT")  # also keep the overlay screenshot here (a PNG path)
TILE = 256


def _tiles(path: str, slide_id: str, patient_id: str) -> pd.DataFrame:
    """The tissue tiles the WSI stage would keep: its thumbnail tissue mask, 256-px boxes, fraction >= 0.25."""
    import openslide

    with openslide.OpenSlide(path) as slide:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        rgb, thumb_mpp = read_thumbnail(slide, mpp_l0=mpp, params=TissueParams())
        w0, h0 = slide.level_dimensions[0]
    mask = detect_tissue(rgb, mpp=thumb_mpp)
    ds = thumb_mpp / mpp
    xs, ys = np.meshgrid(np.arange(0, w0 - TILE + 1, TILE), np.arange(0, h0 - TILE + 1, TILE))
    x, y = xs.ravel(), ys.ravel()
    frac = box_fractions(mask, x0=x / ds, y0=y / ds, size=TILE / ds)
    keep = frac >= 0.25
    n = int(keep.sum())
    return pd.DataFrame({"slide_id": slide_id, "patient_id": patient_id, "event_time": pd.Timestamp("2012-01-01", tz="UTC"),
                         "scale": "tile", "x": x[keep], "y": y[keep], "tile_px": np.int32(TILE), "size_l0": TILE,
                         "mpp": mpp, "tissue_fraction": frac[keep].astype(np.float32),
                         "embedding": [np.zeros(4, np.float32)] * n})


@pytest.fixture(scope="module")
def viewer_store(tmp_path_factory):
    """Two synthetic slides; wsi_tiles, wsi_nuclei and a train run's attention written as the stages write them."""
    root = tmp_path_factory.mktemp("viewer")
    tiny = get_profile("tiny")
    people = [dataclasses.replace(p, n_slides=1, corruptions=[]) for p in sample_patients(2, profile=tiny, seed=6)]
    records = write_slides(people, out_dir=root / "slides", profile=tiny, seed=6)
    store = FeatureStore(str(root / "store"))
    uris, frames = {}, []
    for k, r in enumerate(records):
        sid, pid = f"PSN-slide{k}", f"PSN-patient{k}"  # store ids as a pseudonymised store holds them
        uris[sid] = str(root / r["path"])
        frames.append(_tiles(uris[sid], sid, pid))
    tiles = pd.concat(frames, ignore_index=True)
    store.write_table("wsi_tiles", tiles, kind="bag", bag_key="slide_id")
    rng = np.random.default_rng(0)
    nuc = tiles.iloc[::3][["slide_id", "patient_id", "event_time", "x", "y", "size_l0", "mpp"]].copy()
    counts = rng.integers(5, 60, len(nuc))
    nuc["nucleus_x"] = [list(rng.uniform(0, TILE, c)) for c in counts]
    store.write_table("wsi_nuclei", nuc, kind="bag", bag_key="slide_id")
    tum = tiles[["slide_id", "patient_id", "event_time", "scale", "x", "y"]].assign(
        tumour_probability=rng.uniform(0, 1, len(tiles)))  # the tumour-tile filter's group, keyed like wsi_tiles
    store.write_table("wsi_tumour", tum, kind="bag", bag_key="slide_id")
    run = root / "store" / "_results" / "train-1"
    run.mkdir(parents=True)
    att = tiles[tiles["slide_id"] == "PSN-slide0"][["slide_id", "x", "y", "size_l0"]].assign(
        patient_id="PSN-patient0", attention=lambda a: rng.dirichlet(np.ones(len(a))), task="survival_cox",
        model="porpoise", modality_set="path_omics", repeat=0, fold=0)
    att.to_parquet(run / "attention.parquet")
    pd.DataFrame([{"task": "survival_cox", "model": "porpoise", "modality_set": "path_omics", "repeat": 0,
                   "modalities": "tiles,clinical", "headline": "harrell_c", "harrell_c_mean": 0.6,
                   "n_folds_ok": 1}]).to_parquet(
        run / "summary.parquet")
    pd.DataFrame({"patient_id": ["PSN-patient0"], "fold": [0], "risk": [0.1]}).to_parquet(run / "predictions.parquet")
    (run / "results.json").write_text(json.dumps({"run": "train-1", "created_utc": "2026-01-01T00:00:00+00:00"}))
    return ViewerData(store, uris=uris), (nuc, tum)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.headers, r.read()


def check_qupath_geojson(doc: dict) -> None:
    """The GeoJSON QuPath writes and imports: a FeatureCollection of Features with closed Polygon rings,
    ``properties.objectType``, ``classification {name, color [r, g, b]}`` and numeric ``measurements``."""
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["id"], str)
        g = f["geometry"]
        assert g["type"] == "Polygon"
        for ring in g["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(len(p) == 2 and all(isinstance(c, (int, float)) for c in p) for p in ring)
        p = f["properties"]
        assert p["objectType"] in ("annotation", "detection", "tile")
        c = p["classification"]
        assert isinstance(c["name"], str) and len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"])
        assert all(isinstance(v, float) for v in p["measurements"].values())


def test_routes_geojson_and_no_path_leaves(viewer_store):
    data, (nuc, tum) = viewer_store
    with viewer_server(data, port=0) as (_, url):
        status, _, body = _get(url + "api/patients")
        info = json.loads(body)
        assert [p["patient_id"] for p in info["patients"]] == ["PSN-patient0", "PSN-patient1"]
        assert info["overlays"] == {"tissue": True, "tumour": True, "nuclei": True, "attention": True,
                                    "extremum": False}
        for path in data.uris.values():  # the slide files stay on the server
            assert path.encode() not in body and Path(path).name.encode() not in body
        status, headers, dzi = _get(url + "dzi/PSN-slide0.dzi")
        assert b"<Image" in dzi and 'Width="2048"' in dzi.decode()
        status, headers, tile = _get(url + "dzi/PSN-slide0_files/11/0_0.jpeg")
        assert headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(tile)).size[0] > 200
        tissue = json.loads(_get(url + "api/overlay/PSN-slide0/tissue")[2])
        check_qupath_geojson(tissue)
        want = data.tiles("PSN-slide0", ("scale", "x", "y", "size_l0", "mpp"))
        assert len(tissue["features"]) == int((want["scale"] == "tile").sum())
        first = tissue["features"][0]["geometry"]["coordinates"][0]
        assert first[0] == [float(want["x"].iloc[0]), float(want["y"].iloc[0])] and first[2][0] - first[0][0] == TILE
        nuclei = json.loads(_get(url + "api/overlay/PSN-slide0/nuclei")[2])
        check_qupath_geojson(nuclei)
        area_mm2 = (TILE * float(want["mpp"].iloc[0]) / 1000) ** 2  # a 256-px tile at the slide's mpp
        got = sorted(f["properties"]["measurements"]["value"] for f in nuclei["features"])
        mine = nuc[nuc["slide_id"] == "PSN-slide0"]
        np.testing.assert_allclose(got, sorted(len(v) / area_mm2 for v in mine["nucleus_x"]))
        tumour = json.loads(_get(url + "api/overlay/PSN-slide1/tumour")[2])
        check_qupath_geojson(tumour)
        mine = tum[tum["slide_id"] == "PSN-slide1"]
        np.testing.assert_allclose(sorted(f["properties"]["measurements"]["value"] for f in tumour["features"]),
                                   sorted(mine["tumour_probability"]))
        att = json.loads(_get(url + "api/overlay/PSN-slide0/attention")[2])
        check_qupath_geojson(att)
        assert sum(f["properties"]["measurements"]["value"] for f in att["features"]) == pytest.approx(1.0)
        status, headers, _ = _get(url + "api/overlay/PSN-slide0/tissue.geojson")
        assert "attachment" in headers["Content-Disposition"]
        for bad in ("dzi/nope.dzi", "api/overlay/PSN-slide0/bogus", "static/../viewer.py"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(url + bad)
            assert e.value.code == 404


def _viewer_area(png: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return img[:, 300:]  # right of the 280-px side bar


def test_in_headless_chromium_tiles_arrive_and_an_overlay_toggles(viewer_store, tmp_path):
    data, _ = viewer_store
    with viewer_server(data, port=0) as (_, url):
        browser = Chromium()
        try:
            browser.navigate(url)
            browser.wait_for("window.mmray && window.mmray.ready && window.mmray.slide === 'PSN-slide0'",
                             what="the page and its slide")
            browser.wait_for("window.mmray.tilesLoaded > 0 && window.mmray.fullyLoaded()", what="Deep Zoom tiles")
            time.sleep(1.0)  # OpenSeadragon blends new tiles in over 0.5 s
            tiles = [r for r in browser.responses("_files/") if r["status"] == 200]
            assert tiles and all(r["mimeType"] == "image/jpeg" for r in tiles)
            before = _viewer_area(browser.screenshot())
            assert before.std() > 5, "the slide area is blank: no tile was drawn"
            browser.eval("document.getElementById('ov-tissue').click()")
            n = browser.wait_for("window.mmray.fullyLoaded() && window.mmray.overlays.tissue.drawn",
                                 what="the tissue overlay")
            assert n == len(json.loads(json.dumps(data.overlay("PSN-slide0", "tissue")))["features"])
            time.sleep(0.5)
            png = browser.screenshot()
            on = _viewer_area(png)
            changed = np.abs(on - before).sum(axis=2) > 30
            assert changed.mean() > 0.02, f"toggling the overlay changed {changed.mean():.2%} of the view"
            greenish = (on[..., 1] - on[..., 0] > 10)[changed]  # the tissue overlay's colour is green
            assert greenish.mean() > 0.5
            browser.eval("document.getElementById('ov-tissue').click()")
            browser.wait_for("window.mmray.overlays.tissue.drawn === 0 && window.mmray.fullyLoaded()",
                             what="the overlay switched off")
            time.sleep(1.0)
            off = _viewer_area(browser.screenshot())
            assert (np.abs(off - before).sum(axis=2) > 30).mean() < 0.01  # back to the bare slide
            assert browser.eval("window.mmray.errors.length") == 0, browser.eval("window.mmray.errors")
            for target in (tmp_path / "viewer.png", SCREENSHOT):
                if target:
                    Path(target).write_bytes(png)
            # a location link (what `mmray explain` gives): that slide, the overlay on, zoomed to the box
            from mmray.report.explain_data import viewer_link

            x, y = (int(v) for v in data.tiles("PSN-slide1")[["x", "y"]].iloc[0])
            link = viewer_link({"slide_id": "PSN-slide1", "x": x, "y": y, "size_l0": 256.0, "kind": "nuclei"})
            linked = ("window.mmray && window.mmray.slide === 'PSN-slide1' && window.mmray.focus "
                      "&& window.mmray.overlays.nuclei.drawn > 0")
            # clicked while the viewer is open (a hash change) and opened fresh in a new page
            for fresh in (False, True):
                if fresh:
                    browser.navigate("about:blank")
                    browser.wait_for("location.href === 'about:blank'", what="the blank page")
                browser.navigate(url.rstrip("/") + link)
                browser.wait_for(linked, what=f"the linked location ({'fresh page' if fresh else 'hash change'})")
                zoom = browser.eval("window.mmrayViewer.viewport.getZoom()")
                assert zoom > browser.eval("window.mmrayViewer.viewport.getHomeZoom()") * 1.5
        finally:
            browser.close()
