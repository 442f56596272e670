"""``mmray ingest --modalities wsi`` end to end: store contents, failures, aggregates, resume, force."""

from __future__ import annotations

import csv
import json
import shutil
import types

import numpy as np
import pandas as pd
import pytest
import ray  # a hard dependency: a broken Ray fails here, never skips

from mmray.cli import main  # noqa: E402
from mmray.cohort import load_cohort  # noqa: E402
from mmray.config import load_config  # noqa: E402
from mmray.features.aggregate import pool  # noqa: E402
from mmray.ingest.run import IngestConfig, run_ingest  # noqa: E402
from mmray.ingest.wsi import slide_list  # noqa: E402
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
    assert "slides planned" in caplog.text and "tiles+regions embedded" in caplog.text  # progress log
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
        assert r.at[rid, "x"] <= x < r.at[rid, "x"] + 1024 and r.at[rid, "y"] <= y < r.at[rid, "y"] + 1024
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

    # ---- force: everything again, bit-identical embeddings (fixed seed, new actor processes)
    report = only(run_ingest(config(cohort_dir, store_uri, force=True), progress=lambda _: None))
    assert (report.n_done, report.n_skipped) == (len(good), 0)
    assert report.groups == {"wsi_tiles": "v0002", "wsi_slide": "v0002", "wsi_patient": "v0002"}
    again = store.read_bag("wsi_tiles", sid).sort_values(["scale", "y", "x"])
    first = tiles.sort_values(["scale", "y", "x"])
    np.testing.assert_array_equal(np.stack(again["embedding"].to_numpy()), np.stack(first["embedding"].to_numpy()))

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
    np.testing.assert_array_equal(np.stack(extra.sort_values(["scale", "y", "x"])["embedding"].to_numpy()),
                                  np.stack(first["embedding"].to_numpy()))  # same pixels, same embeddings
    slides3 = store.read_table("wsi_slide").set_index("slide_id")
    assert slides3.loc["EXTRA-DX9", "tiles_version"] == "v0003" and slides3.loc[sid, "tiles_version"] == "v0002"
    assert store.manifest("wsi_slide")["num_bags"] == len(good) + 1
    assert src["patient_id"] in set(store.read_table("wsi_patient")["patient_id"])


def test_slide_list_pseudonymises_and_dates(cohort):
    cohort_dir, truth = cohort
    ctx = types.SimpleNamespace(cohort=load_cohort(cohort_dir / "cohort.yaml"), patient_key=lambda p: "PSN-" + p[-4:])
    slides, failures = slide_list(ctx)
    assert not failures and len(slides) == len(truth["slides"])
    first = truth["slides"][0]
    got = next(s for s in slides if s["uri"].endswith(first["path"]))
    pid = first["patient_id"]
    assert got["patient_id"] == "PSN-" + pid[-4:]
    assert got["slide_id"] == first["slide_id"].replace(pid, got["patient_id"]) and pid not in got["slide_id"]
    assert pd.Timestamp(got["event_time"]) == pd.Timestamp(first["acquisition_date"], tz="UTC")
