"""``mmray ingest --modalities wsi`` end to end: store contents, failures, aggregates, resume, force."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import ray  # a hard dependency: a broken Ray fails here, never skips

from wsi_testdata import generic_tiff, strip_resolution_tags, tiny_slides  # noqa: E402

from mmray.cli import main  # noqa: E402
from mmray.cohort import load_cohort  # noqa: E402
from mmray.config import load_config  # noqa: E402
from mmray.features.aggregate import pool  # noqa: E402
from mmray.ingest.pseudonym import Pseudonymiser, source_label  # noqa: E402
from mmray.ingest.run import IngestConfig, run_ingest  # noqa: E402
from mmray.ingest.slide_ids import slide_list  # noqa: E402
from mmray.ingest.wsi import _resume  # noqa: E402
from mmray.store import FeatureStore  # noqa: E402
from mmray.store.keys import UNDATED  # noqa: E402
from mmray.synth.cohort import write_cohort  # noqa: E402

# A small, fast configuration: 128-px tiles at 1 mpp (24 per tiny slide), 512-px regions, a tiny encoder.
ARGS = ["wsi.encoder.name=resnet10t", "wsi.encoder.input_px=32", "wsi.target_mpp=1.0", "wsi.tile_px=128",
        "wsi.region_px=512", "wsi.encoder.batch_size=32", "wsi.progress_interval_s=1"]

# starts Ray (a module fixture): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsi_cohort") / "cohort"
    write_cohort(out, patients=5, seed=2, profile="tiny", corrupt=1)
    truth = json.loads((out / "truth.json").read_text())
    assert [c["kind"] for c in truth["corruptions"]] == ["truncated_slide"]
    return out, truth


def config(cohort_dir, store, *extra, force=False):
    overrides = [f"cohort={cohort_dir / 'cohort.yaml'}", f"store={store}", "modalities=[wsi]", *ARGS, *extra]
    return load_config(IngestConfig, None, overrides + (["force=true"] if force else []))


def only(reports):
    (report,) = reports
    return report


def test_ingest_resume_force_and_new_slides(cohort, tmp_path, capsys, caplog):
    cohort_dir, truth = cohort
    cohort_dir = shutil.copytree(cohort_dir, tmp_path / "cohort")  # this test adds a slide to its manifest
    store_uri = tmp_path / "store"
    bad = [s for s in truth["slides"] if s["corrupt"]]
    good = {s["slide_id"]: s for s in truth["slides"] if not s["corrupt"]}
    assert len(bad) == 1 and len(good) >= 4

    # ---- first run, through the CLI: the truncated slide fails, the rest finish, exit status 3
    with caplog.at_level("INFO", logger="mmray.ingest.wsi"):
        rc = main(["ingest", "--cohort", str(cohort_dir / "cohort.yaml"), "--store", str(store_uri),
                   "--modalities", "wsi", *ARGS])
    out = capsys.readouterr().out
    assert rc == 3, out
    assert "slides planned" in caplog.text and "tiles+regions encoded" in caplog.text  # progress log
    store = FeatureStore(store_uri)
    failures = store.failures()
    assert len(failures) == 1 and failures["item"][0].endswith(bad[0]["path"])
    assert failures["patient_id"][0] == bad[0]["patient_id"] and "truncated" in failures["reason"][0]
    assert bad[0]["slide_id"] in out and "1 input(s) failed" in out
    assert store.bag_ids("wsi_tiles") == sorted(good)
    assert (store.latest("wsi_tiles"), store.latest("wsi_slide"), store.latest("wsi_patient")) == ("v0001",) * 3

    # tile rows: coordinates on the grid, tiles inside their regions, one encoder identity
    sid = sorted(good)[0]
    tiles = store.read_bag("wsi_tiles", sid)
    assert set(tiles["scale"]) == {"tile", "region"} and set(tiles["encoder_id"]) == {"resnet10t@random-seed0"}
    assert tiles["patient_id"].iloc[0] == good[sid]["patient_id"]
    assert tiles["event_time"].iloc[0] == pd.Timestamp(good[sid]["acquisition_date"], tz="UTC")
    t, r = tiles[tiles["scale"] == "tile"], tiles[tiles["scale"] == "region"].set_index("region_id")
    assert (t["size_l0"] == 256).all() and (t["x"] % 256 == 0).all() and (t["tile_px"] == 128).all()
    assert (r["size_l0"] == 1024).all() and (r["tile_px"] == 512).all() and (tiles["mpp"] == 1.0).all()
    for x, y, rid in zip(t["x"], t["y"], t["region_id"]):
        if rid == -1:  # its region held too little tissue to be planned: no kept region covers it
            assert not ((r["x"] <= x) & (x < r["x"] + 1024) & (r["y"] <= y) & (y < r["y"] + 1024)).any()
            continue
        assert r.at[rid, "x"] <= x < r.at[rid, "x"] + 1024 and r.at[rid, "y"] <= y < r.at[rid, "y"] + 1024
    assert (t["region_id"] >= 0).mean() > 0.5  # most tissue tiles sit in a planned region
    man = store.manifest("wsi_tiles")
    assert man["params"]["embed_key"]["encoder_id"] == "resnet10t@random-seed0"
    assert {s["slide_id"] for s in man["sources"]} == set(good) and all("etag" in s for s in man["sources"])

    # slide aggregates: the pooled values of the bag, and each extremum traces back to its tile
    slides = store.read_table("wsi_slide").set_index("slide_id")
    assert sorted(slides.index) == sorted(good) and (slides["tiles_version"] == "v0001").all()
    emb = np.stack(t["embedding"].to_numpy())
    want = pool(emb, t["x"].to_numpy(), t["y"].to_numpy())
    row = slides.loc[sid]
    dim = int(row["embedding_dim"])
    assert dim == 512 and row["n_tiles"] == len(t) and row["n_regions"] == len(r)
    np.testing.assert_allclose([row[f"tile_mean_{i}"] for i in range(dim)], want.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal([row[f"tile_max_{i}"] for i in range(dim)], want.max)
    at = {(x, y): e for x, y, e in zip(t["x"], t["y"], emb)}
    for d in range(0, dim, 37):
        assert at[(row["tile_argmax_x"][d], row["tile_argmax_y"][d])][d] == row[f"tile_max_{d}"]
        assert at[(row["tile_argmin_x"][d], row["tile_argmin_y"][d])][d] == row[f"tile_min_{d}"]

    # patient aggregates: one row per patient, latest slide date, max over the patient's slides
    patients = store.read_table("wsi_patient").set_index("patient_id")
    by_patient = pd.DataFrame(good.values()).groupby("patient_id")
    assert sorted(patients.index) == sorted(by_patient.groups)
    for pid, group in by_patient:
        p = patients.loc[pid]
        assert list(p["slide_ids"]) == sorted(group["slide_id"])
        assert p["event_time"] == pd.Timestamp(max(group["acquisition_date"]), tz="UTC")
        d = 5
        best = max(group["slide_id"], key=lambda s: slides.loc[s, f"tile_max_{d}"])
        assert p[f"tile_max_{d}"] == slides.loc[best, f"tile_max_{d}"] and p["tile_argmax_slide"][d] == best
        assert p["n_tiles"] == slides.loc[list(group["slide_id"]), "n_tiles"].sum()

    # ---- second run: nothing to embed again (the broken slide is retried and fails again), no new version
    report = only(run_ingest(config(cohort_dir, store_uri), progress=lambda _: None))
    assert (report.n_done, report.n_skipped, len(report.failures)) == (0, len(good), 1)
    assert report.groups == {}
    assert store.versions("wsi_tiles") == ["v0001"] and store.versions("wsi_slide") == ["v0001"]

    # ---- force: everything again, the same embeddings (fixed seed, new actor processes).  Equal to float32
    # rounding, not bit for bit: Ray Data may batch the tiles differently (it did on a loaded machine), and
    # oneDNN's convolutions round differently for another batch size (2.4e-7 seen).
    report = only(run_ingest(config(cohort_dir, store_uri, force=True), progress=lambda _: None))
    assert (report.n_done, report.n_skipped) == (len(good), 0)
    assert report.groups == {"wsi_tiles": "v0002", "wsi_slide": "v0002", "wsi_patient": "v0002"}
    again = store.read_bag("wsi_tiles", sid).sort_values(["scale", "y", "x"])
    first = tiles.sort_values(["scale", "y", "x"])
    np.testing.assert_allclose(np.stack(again["embedding"].to_numpy()), np.stack(first["embedding"].to_numpy()),
                               rtol=1e-5, atol=1e-6)

    # ---- a new slide in the manifest: only it is embedded; the others are carried without copying
    src = good[sid]
    shutil.copy(cohort_dir / src["path"], cohort_dir / "slides" / "EXTRA.tiff")
    with open(cohort_dir / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerow([src["patient_id"], "wsi", "slides/EXTRA.tiff", "EXTRA-DX9", ""])
    report = only(run_ingest(config(cohort_dir, store_uri), progress=lambda _: None))
    assert (report.n_done, report.n_skipped) == (1, len(good))
    man = store.manifest("wsi_tiles")
    assert man["version"] == "v0003" and man["num_bags"] == len(good) + 1
    assert sum(f["path"].startswith("../v0002/") for f in man["files"]) >= 1
    assert {f.get("carried_from") for f in man["files"]} >= {"v0002", None}
    extra = store.read_bag("wsi_tiles", "EXTRA-DX9")
    assert (extra["event_time"] == UNDATED).all()  # no acquisition date: undated
    # same pixels, same embeddings (to float32 rounding: another batch composition, as with force above)
    np.testing.assert_allclose(np.stack(extra.sort_values(["scale", "y", "x"])["embedding"].to_numpy()),
                               np.stack(first["embedding"].to_numpy()), rtol=1e-5, atol=1e-6)
    slides3 = store.read_table("wsi_slide").set_index("slide_id")
    assert slides3.loc["EXTRA-DX9", "tiles_version"] == "v0003" and slides3.loc[sid, "tiles_version"] == "v0002"
    assert store.manifest("wsi_slide")["num_bags"] == len(good) + 1
    assert src["patient_id"] in set(store.read_table("wsi_patient")["patient_id"])


def test_slide_list_pseudonymises_and_dates(cohort):
    cohort_dir, truth = cohort
    manifest = load_cohort(cohort_dir / "cohort.yaml").manifest()
    key = Pseudonymiser(b"k" * 32)
    slides, failures = slide_list(manifest, key)
    assert not failures and len(slides) == len(truth["slides"])
    first = truth["slides"][0]
    got = next(s for s in slides if s["uri"].endswith(first["path"]))
    pid = first["patient_id"]
    assert got["patient_id"] == key(pid)
    # <patient pseudonym>-S<keyed hash>: nothing of the barcode, the file name or the slide's suffix survives
    assert got["slide_id"].startswith(key(pid) + "-S") and len(got["slide_id"]) == 40
    assert pid not in got["slide_id"] and "DX" not in got["slide_id"]
    assert pd.Timestamp(got["event_time"]) == pd.Timestamp(first["acquisition_date"], tz="UTC")
    assert slide_list(manifest, Pseudonymiser(b"k" * 32))[0] == slides  # stable for a key
    other = {s["slide_id"] for s in slide_list(manifest, Pseudonymiser(b"x" * 32))[0]}
    assert not other & {s["slide_id"] for s in slides}  # another key, other ids
    plain, _ = slide_list(manifest, lambda p: p)  # no key: the manifest's item ids
    assert {s["slide_id"] for s in plain} == {s["slide_id"] for s in truth["slides"]}


def test_slide_ids_and_failures_hold_no_file_name_or_path_when_pseudonymised(tmp_path):
    manifest = pd.DataFrame({"patient_id": ["P-0001", "P-0001", "P-0002"], "modality": ["wsi"] * 3,
                             "path": [str(tmp_path / "Smith_J" / "ACC123456789.svs")] * 2
                             + [str(tmp_path / "ACC987654321.svs")],
                             "acquisition_date": ["2020-01-02", "2020-01-02", "not a date"]})
    key = Pseudonymiser(b"k" * 32)
    slides, failures = slide_list(manifest, key)
    assert len(slides) == 1 and len(failures) == 2  # a duplicate and a bad date, each named by its label
    written = repr(slides[0]["slide_id"]) + repr(failures)
    for raw in ("ACC123456789", "ACC987654321", "Smith_J", "P-0001", "P-0002", str(tmp_path)):
        assert raw not in written, raw
    assert {f["item"] for f in failures} <= {source_label(key, p) for p in manifest["path"]}
    assert all(f["item"].startswith("SRC-") for f in failures)
    assert "appears twice" in failures[0]["reason"] and "not a date" in failures[1]["reason"]


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mmray.ingest.wsi" and "slides planned" in r.getMessage()]


@pytest.mark.integration
def test_bogus_resolutions_fail_at_planning_while_good_slides_finish(tmp_path, capsys, caplog):
    """The issue's case: a 300 x 250 px TIFF with the 72-dpi default (OpenSlide: 352.8 um/px) used to plan
    ~27,000 upsampled tiles; now it fails at planning with the reason, and so does a TIFF without any
    resolution tag, while a good slide and a 72-dpi one whose manifest row gives its mpp are embedded."""
    (good,) = tiny_slides(tmp_path, n=1)
    generic_tiff(tmp_path / "photo72.tif")
    strip_resolution_tags(generic_tiff(tmp_path / "bare.tif"))
    generic_tiff(tmp_path / "rescued.tif", width_px=1024, height_px=768)  # 72 dpi too; the manifest says 1 um/px
    rows = [[good["patient_id"], "wsi", good["path"], "GOOD-DX1", ""], ["P-72", "wsi", "photo72.tif", "PHOTO72", ""],
            ["P-BARE", "wsi", "bare.tif", "BARE", ""], ["P-RESC", "wsi", "rescued.tif", "RESCUED", "1.0"]]

    def write_manifest():
        with open(tmp_path / "manifest.csv", "w", newline="") as f:
            csv.writer(f).writerows([["patient_id", "modality", "path", "item_id", "mpp"], *rows])

    write_manifest()
    (tmp_path / "cohort.yaml").write_text("name: bogus\nmanifest: manifest.csv\n")
    store_uri = tmp_path / "store"
    with caplog.at_level("INFO", logger="mmray.ingest.wsi"):
        rc = main(["ingest", "--cohort", str(tmp_path / "cohort.yaml"), "--store", str(store_uri),
                   "--modalities", "wsi", *ARGS])
    out = capsys.readouterr().out
    assert rc == 3 and "2 input(s) failed" in out, out
    store = FeatureStore(store_uri)
    reasons = dict(zip(store.failures()["patient_id"], store.failures()["reason"]))
    assert sorted(reasons) == ["P-72", "P-BARE"]
    assert reasons["P-72"].startswith("slide PHOTO72: its resolution is not a scanner's: openslide.mpp-x = 352.8 "
                                      "um/px comes from tiff.XResolution = 72 pixels per inch")
    assert reasons["P-BARE"].startswith("slide BARE has no resolution metadata (no openslide.mpp-x/-y, no TIFF "
                                        "resolution tags)")
    for reason in reasons.values():
        assert "manifest's mpp column" in reason and "wsi.mpp_override=" in reason
    assert store.bag_ids("wsi_tiles") == ["GOOD-DX1", "RESCUED"]
    rescued = store.read_bag("wsi_tiles", "RESCUED")
    assert set(rescued.loc[rescued["scale"] == "tile", "size_l0"]) == {128}  # 128 px at 1.0 um/px from 1.0 um/px
    # progress counted at the encoder: the last line has every planned row encoded, the rate and ETA 0
    last = progress_lines(caplog)[-1]
    m = re.search(r"4/4 slides planned, 2 complete, 2 failed; ([\d,]+)/([\d,]+) tiles\+regions encoded "
                  r"\(([\d,]+) /s, ETA 0:00:00\), ([\d,]+) written", last)
    assert m, last
    encoded, planned, _, written = (int(g.replace(",", "")) for g in m.groups())
    assert encoded == planned == written == len(store.read_table("wsi_tiles")) > 0

    assert {s["slide_id"]: s.get("mpp") for s in store.manifest("wsi_tiles")["sources"]} == {
        "GOOD-DX1": None, "RESCUED": 1.0}  # the manifest mpp is part of the slide's resume identity


def test_a_changed_manifest_mpp_embeds_that_slide_again(tmp_path):
    store = FeatureStore(tmp_path / "store")
    key = {"encoder_id": "e@random-seed0"}
    sources = {"A": {"uri": "a.tif", "size_bytes": 10, "etag": "x", "slide_id": "A"},
               "B": {"uri": "b.tif", "size_bytes": 20, "etag": "y", "slide_id": "B", "mpp": 1.0}}
    bags = pd.DataFrame({"slide_id": ["A", "B"], "patient_id": ["P1", "P2"], "event_time": [UNDATED] * 2,
                         "x": [0, 0]})
    store.write_table("wsi_tiles", bags, kind="bag", bag_key="slide_id", sources=list(sources.values()),
                      params={"embed_key": key})
    slides = [{"slide_id": s, "patient_id": p, "event_time": UNDATED.isoformat()}
              for s, p in (("A", "P1"), ("B", "P2"))]
    todo, carry, prev = _resume(store, slides, key, sources, False)
    assert (todo, carry, prev) == ([], ["A", "B"], "v0001")
    for mpp in (0.8, None):  # a new value, or the column emptied: the file's resolution now
        changed = {**sources, "B": {k: v for k, v in {**sources["B"], "mpp": mpp}.items() if v is not None}}
        todo, carry, _ = _resume(store, slides, key, changed, False)
        assert [s["slide_id"] for s in todo] == ["B"] and carry == ["A"]
