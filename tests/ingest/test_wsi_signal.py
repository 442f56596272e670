"""WSI ingest with nuclei, stain normalisation and the tumour-tile filter: what lands in the store, resume,
the site-signature check, and pseudonymisation of annotation paths."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import ray  # a hard dependency: a broken Ray fails here, never skips

from mmray.config import build, load_config
from mmray.ingest.identifier_scan import Scanner, cohort_identifiers
from mmray.ingest.pseudonym import KEY_ENV, Pseudonymiser
from mmray.ingest.report import ModalityReport
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.ingest.wsi import WsiConfig
from mmray.ingest.wsi_tumour import ingest_tumour
from mmray.report.render import read_report
from mmray.store import FeatureStore
from mmray.synth.cohort import write_cohort
from mmray.synth.slide_tissue import truth_mask, tumour_geojson

KEY = "k" * 32
ARGS = ["wsi.encoder.name=resnet10t", "wsi.encoder.input_px=32", "wsi.target_mpp=1.0", "wsi.tile_px=128",
        "wsi.region_px=512", "wsi.encoder.batch_size=32", "wsi.nuclei.enabled=true",
        "wsi.nuclei.max_tiles_per_slide=6", "wsi.stain.method=macenko", "wsi.stain.fit_tiles=2",
        "wsi.stain.probe_tiles=3", "wsi.tile_filter.min_positive_tiles=5", "wsi.site_signature.min_slides=4",
        "wsi.site_signature.min_slides_per_site=2"]

# starts Ray (a module fixture) and runs two whole WSI ingests (~1-2 min on 2 cores): make test-e2e
pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A 6-patient tiny cohort, 4 slides annotated (GeoJSON from the truth masks), ingested pseudonymised."""
    root = tmp_path_factory.mktemp("wsi_signal")
    out = root / "cohort"
    write_cohort(out, patients=6, seed=3, profile="tiny")
    truth = json.loads((out / "truth.json").read_text())
    by_patient: dict[str, dict] = {}
    for s in truth["slides"]:
        by_patient.setdefault(s["patient_id"], s)
    chosen = {s["slide_id"] for s in list(by_patient.values())[:4]}
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    for r in rows:
        r["annotation"] = ""
        if r["modality"] == "wsi" and r["item_id"] in chosen:
            s = next(t for t in truth["slides"] if t["slide_id"] == r["item_id"])
            mask, grid = truth_mask(s["tumour_mask"])
            name = f"notes/{r['item_id']}-tumour.geojson"
            (out / "notes").mkdir(exist_ok=True)
            (out / name).write_text(json.dumps(tumour_geojson(mask, grid_px=grid)))
            r["annotation"] = name
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    store = root / "store"
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    cfg = load_config(IngestConfig, None, [f"cohort={out / 'cohort.yaml'}", f"store={store}", "modalities=[wsi]",
                                           *ARGS])
    try:
        (report,) = run_ingest(cfg)
        (again,) = run_ingest(cfg)
    finally:
        mp.undo()
    return SimpleNamespace(out=out, store=FeatureStore(str(store)), report=report, again=again, cfg=cfg,
                           truth=truth, annotated=chosen)


def test_stain_reference_and_slide_stains_are_kept_in_params_and_lineage(ingested):
    store = ingested.store
    tiles = store.manifest("wsi_tiles")
    stain = tiles["params"]["stain"]
    assert stain["key"]["method"] == "macenko" and len(stain["reference"]) == 8 and stain["reference_slides"] >= 1
    assert tiles["params"]["embed_key"]["stain"] == stain
    assert all(len(src["stain"]) == 8 for src in tiles["sources"])
    assert store.manifest("wsi_nuclei")["params"]["nuclei_key"]["stain"] == stain
    # probe tiles were embedded as read too, a few per slide
    t = store.read_table("wsi_tiles", columns=["slide_id", "embedding", "embedding_raw"])
    probes = t[t["embedding_raw"].notna()]
    assert set(probes.groupby("slide_id").size()) <= {3} and len(probes) >= 3 * len(t["slide_id"].unique()) - 3
    diff = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(probes["embedding"], probes["embedding_raw"])]
    assert max(diff) > 1e-3  # normalisation changed what the encoder saw


def test_tumour_filter_scores_every_tile_out_of_fold_and_filters_the_aggregates(ingested):
    store = ingested.store
    tum = store.read_table("wsi_tumour")
    tiles = store.read_table("wsi_tiles", columns=["slide_id", "scale", "x", "y"])
    assert len(tum) == len(tiles)
    assert set(zip(tum["slide_id"], tum["scale"], tum["x"], tum["y"])) == \
        set(zip(tiles["slide_id"], tiles["scale"], tiles["x"], tiles["y"]))
    assert tum["tumour_probability"].between(0, 1).all()
    t = tum[tum["scale"] == "tile"]
    annotated = t[t["fold"] >= 0]
    assert annotated["slide_id"].nunique() == 4 and annotated["annotated"].notna().all()
    assert t[t["fold"] < 0]["annotated"].isna().all()
    man = store.manifest("wsi_tumour")
    assert man["params"]["n_annotated_slides"] == 4 and len(man["params"]["c_per_fold"]) == man["params"]["n_folds"]
    notes = [s for s in man["sources"] if s.get("kind") == "annotation"]
    assert len(notes) == 4 and all(s["uri"].startswith("SRC-") and len(s["sha256"]) == 64 for s in notes)
    # annotated tumour tiles score higher than the annotated slides' other tiles
    inside = annotated["annotated"] >= 0.5
    assert annotated[inside]["tumour_probability"].mean() > annotated[~inside]["tumour_probability"].mean()
    # aggregates: each slide pooled over its tiles at or above the threshold (all, when none passes)
    thr = man["params"]["threshold"]
    slide = store.read_table("wsi_slide", columns=["slide_id", "n_tiles"]).set_index("slide_id")["n_tiles"]
    for sid, g in t.groupby("slide_id"):
        passing = int((g["tumour_probability"] >= thr).sum())
        assert slide[sid] == (passing or len(g))
    assert store.manifest("wsi_slide")["params"]["tile_filter"] == {"version": man["version"], "threshold": thr}
    assert store.manifest("wsi_nuclei_slide")["params"]["tumour_version"] == man["version"]


def test_mil_bags_are_sampled_from_the_tiles_the_filter_keeps(ingested):
    from mmray.train.data import TileReader

    store = ingested.store
    thr = store.manifest("wsi_tumour")["params"]["threshold"]
    tum = store.read_table("wsi_tumour")
    tum = tum[tum["scale"] == "tile"]
    everything = TileReader(store=store.uri, max_tiles=None, tile_filter=None, extra_columns=("x", "y"))
    filtered = TileReader(store=store.uri, max_tiles=None, extra_columns=("x", "y"))  # "auto": the store's filter
    assert filtered.tile_filter and filtered.tile_filter["threshold"] == thr
    checked = 0
    for sid, g in tum.groupby("slide_id"):
        hit = g[g["tumour_probability"] >= thr]
        passing = set(zip(hit["x"].astype(int), hit["y"].astype(int)))
        got = filtered.read_sample("p", [sid])
        whole = everything.read_sample("p", [sid])
        kept = set(zip(got["x"].astype(int), got["y"].astype(int)))
        assert kept == (passing or set(zip(whole["x"].astype(int), whole["y"].astype(int))))
        checked += bool(passing) and len(passing) < len(g)
        # a sample is drawn among the kept tiles only
        few = TileReader(store=store.uri, max_tiles=3, extra_columns=("x", "y")).read_sample("p", [sid])
        assert len(few["x"]) == min(3, len(kept)) and set(zip(few["x"].astype(int), few["y"].astype(int))) <= kept
    assert checked  # at least one slide where the filter dropped some tiles


def test_rerun_writes_nothing_and_the_report_says_what_ran(ingested):
    assert {"wsi_tiles", "wsi_nuclei", "wsi_tumour", "wsi_slide", "wsi_patient"} <= set(ingested.report.groups)
    assert not {"wsi_tiles", "wsi_nuclei", "wsi_tumour", "wsi_slide"} & set(ingested.again.groups)
    assert any(n.startswith("tile filter: positive-unlabeled fit on 4 annotated") for n in ingested.report.notes)
    rep = read_report(ingested.store, "site_signature")
    assert rep["stain_method"] == "macenko" and [c["features"] for c in rep["checks"]] == ["stored", "before", "after"]
    assert any(n.startswith("site signature") for n in ingested.report.notes)


def test_no_annotation_path_file_or_patient_id_reaches_the_store(ingested):
    ids = cohort_identifiers(ingested.out / "cohort.yaml")
    kinds = {i.kind for i in ids}
    assert any(i.value.endswith("-tumour.geojson") for i in ids) and "patient_id" in kinds
    findings, n_files = Scanner(ids).scan([ingested.store.uri])
    assert n_files > 20 and not findings, [f.line() for f in findings[:5]]


def test_without_annotations_the_filter_is_off_and_says_so(ingested):
    report = ModalityReport("wsi")
    ctx = SimpleNamespace(config=build(WsiConfig, ingested.cfg.wsi), store=ingested.store, force=False,
                          patient_key=Pseudonymiser(KEY.encode()))
    slides = [{"slide_id": s, "patient_id": "p", "annotation": None} for s in ingested.store.bag_ids("wsi_tiles")]
    assert ingest_tumour(ctx, slides=slides, report=report, tiles_version=ingested.store.latest("wsi_tiles")) is None
    assert report.notes == ["tile filter: no slide has an annotation (manifest column 'annotation', QuPath GeoJSON), "
                            "so the tumour filter is off and every tile is kept"]
