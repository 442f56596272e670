"""TRIDENT/CLAM h5 features: import -> export -> import round trip, and slides that fail with their reason."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from slide_cohort import small_slide_cohort

from mmray.cli import main
from mmray.cohort import load_cohort
from mmray.features.feature_io import bags_equal, export_features, import_features, read_h5
from mmray.ingest.slide_ids import slide_list
from mmray.store import FeatureStore

D = 8


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out, _ = small_slide_cohort(tmp_path_factory.mktemp("fio") / "cohort")
    slides, _ = slide_list(load_cohort(out / "cohort.yaml").manifest(), lambda p: p)
    return out, slides


def _write(path, feats, coords, **attrs):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        c = f.create_dataset("coords", data=coords)
        for k, v in attrs.items():
            c.attrs[k] = v


def _grid(n, step=256):
    xs = (np.arange(n) % 5) * step
    ys = (np.arange(n) // 5) * step
    return np.stack([xs, ys], 1).astype(np.int64)


def test_import_export_import_round_trip_and_bad_slides(cohort, tmp_path):
    cohort_dir, slides = cohort
    assert len(slides) >= 4
    folder = tmp_path / "clam"
    folder.mkdir()
    rng = np.random.default_rng(0)
    want = {}
    good, count_bad, coord_bad = slides[0], slides[1], slides[2]
    for s in slides:
        n = 12
        feats = rng.normal(size=(n, D)).astype(np.float32)
        coords = _grid(n)
        stem = s["uri"].rsplit("/", 1)[-1].split(".")[0]
        if s is count_bad:
            _write(folder / f"{stem}.h5", feats, coords[:-1], patch_size=256, patch_level=0)
        elif s is coord_bad:
            coords[3] = (10**6, 5)
            _write(folder / f"{stem}.h5", feats, coords, patch_size=256, patch_level=0)
        else:
            _write(folder / f"{stem}.h5", feats, coords, patch_size=256, patch_level=0)  # CLAM attributes
            want[s["slide_id"]] = (feats, coords)
    first = import_features(str(folder), store=str(tmp_path / "s1"), cohort=str(cohort_dir / "cohort.yaml"),
                            fmt="clam", encoder="uni_v1", aggregates=False)
    reasons = {f["slide_id"]: f["reason"] for f in first.failures}
    assert set(reasons) == {count_bad["slide_id"], coord_bad["slide_id"]}
    assert "12 feature rows but 11 coordinates" in reasons[count_bad["slide_id"]]
    assert "fall outside" in reasons[coord_bad["slide_id"]] and "(1000000, 5)" in reasons[coord_bad["slide_id"]]
    st1 = FeatureStore(str(tmp_path / "s1"))
    assert set(st1.bag_ids("wsi_tiles")) == set(want)
    assert len(st1.failures("features_import")) == 2
    for sid, (feats, coords) in want.items():  # what the store holds is what the files said
        bag = st1.read_bag("wsi_tiles", sid)
        order = np.lexsort((bag["x"].to_numpy(), bag["y"].to_numpy()))
        np.testing.assert_array_equal(np.stack(bag["embedding"].to_numpy())[order], feats)
        np.testing.assert_array_equal(bag[["x", "y"]].to_numpy()[order], coords)
        assert set(bag["size_l0"]) == {256} and set(bag["encoder_id"]) == {"uni_v1"}
        assert np.allclose(bag["mpp"], 0.5)  # 256-px patches read at level 0 of 0.5-um/px slides
    assert st1.manifest("wsi_tiles")["params"]["embed_key"]["encoder_id"] == "uni_v1"

    files = export_features(str(tmp_path / "out"), store=str(tmp_path / "s1"), fmt="clam")
    assert len(files) == len(want)
    data = read_h5(files[0], name="x")
    assert data["attrs"]["patch_size_level0"] == 256 and data["features"].dtype == np.float32
    again = import_features(str(tmp_path / "out"), store=str(tmp_path / "s2"), cohort=str(cohort_dir / "cohort.yaml"),
                            fmt="trident", encoder="uni_v1", aggregates=False)
    st2 = FeatureStore(str(tmp_path / "s2"))
    assert set(st2.bag_ids("wsi_tiles")) == set(want)
    assert {f["slide_id"] for f in again.failures} == {count_bad["slide_id"], coord_bad["slide_id"]}  # no file
    for sid in want:
        assert bags_equal(st1.read_bag("wsi_tiles", sid), st2.read_bag("wsi_tiles", sid))


def test_cli_import_reports_failures_with_exit_3(cohort, tmp_path, capsys):
    cohort_dir, slides = cohort
    folder = tmp_path / "h5"
    folder.mkdir()
    s = slides[0]
    _write(folder / f"{s['slide_id']}.h5", np.zeros((3, D), np.float32), _grid(3))  # no patch size attribute
    code = main(["features", "import", str(folder), "--format", "trident", "--store", str(tmp_path / "st"),
                 "--cohort", str(cohort_dir / "cohort.yaml"), "--encoder", "conch", "--no-aggregates"])
    out = capsys.readouterr().out
    assert code == 3
    assert "neither patch_size_level0" in out and "no h5 file named after it" in out
