"""End to end: `mmray ingest` of slides (with nuclei) into a pseudonymised store, then the viewer over it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from test_viewer import check_qupath_geojson

from mmray.cli import main
from mmray.report.viewer import viewer_data, viewer_server
from mmray.synth.cohort import write_cohort

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
KEY = "viewer-e2e-key-0123456789abcdef"
WSI = ["wsi.encoder.name=resnet10t", "wsi.encoder.input_px=32", "wsi.target_mpp=1.0", "wsi.tile_px=128",
       "wsi.region_px=512", "wsi.encoder.batch_size=32", "wsi.nuclei.enabled=true",
       "wsi.nuclei.max_tiles_per_slide=6"]


def _get(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.status, r.read()


def test_viewer_on_a_pseudonymised_store(tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("MMRAY_PSEUDONYM_KEY", KEY)
    cohort = tmp_path / "cohort"
    write_cohort(cohort, patients=2, seed=4, profile="tiny")
    truth = json.loads((cohort / "truth.json").read_text())
    store = tmp_path / "store"
    try:
        rc = main(["ingest", "--cohort", str(cohort / "cohort.yaml"), "--store", str(store), "--modalities", "wsi",
                   *WSI])
    finally:
        ray.shutdown()
    assert rc == 0
    raw = [p["patient_id"] for p in truth["patients"]] + [s["slide_id"] for s in truth["slides"]]
    paths = [s["path"] for s in truth["slides"]]
    data = viewer_data(str(store), cohort=str(cohort / "cohort.yaml"))
    slides = data.slides()
    assert len(slides) == len(truth["slides"]) and all(s.startswith("PSN-") for s in slides["slide_id"])
    assert set(data.uris) >= set(slides["slide_id"])  # every file found through the manifest and the key
    with viewer_server(data, port=0) as (_, url):
        _, body = _get(url + "api/patients")
        info = json.loads(body)
        assert info["overlays"]["tissue"] and info["overlays"]["nuclei"]
        sid = info["patients"][0]["slides"][0]["slide_id"]
        assert info["patients"][0]["slides"][0]["readable"]
        _, tile = _get(f"{url}dzi/{sid}_files/8/0_0.jpeg")
        assert tile[:2] == b"\xff\xd8"  # a JPEG
        answers = [body]
        for kind in ("tissue", "nuclei"):
            _, doc = _get(f"{url}api/overlay/{sid}/{kind}")
            check_qupath_geojson(json.loads(doc))
            assert json.loads(doc)["features"], kind
            answers.append(doc)
        got = sorted(f["properties"]["measurements"]["value"] for f in json.loads(doc)["features"])
        want = data.store.read_bag("wsi_nuclei", sid)["density_per_mm2"].dropna()
        assert got == pytest.approx(sorted(want.astype(float)))  # the nuclei stage's density, tile by tile
        for text in answers:  # no raw patient id, barcode, slide name or path reaches the browser
            assert not any(r.encode() in text for r in raw + paths)
    # without the cohort (and so without the key's manifest lookup) the files cannot be found: 404, no path
    bare = viewer_data(str(store))
    with viewer_server(bare, port=0) as (_, url):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"{url}dzi/{sid}.dzi")
        assert e.value.code == 404 and not any(p.encode() in e.value.read() for p in paths)
