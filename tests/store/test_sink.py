"""FeatureGroupSink: a Ray Dataset written as one feature-group version, committed once."""

from __future__ import annotations

import posixpath

import numpy as np
import pandas as pd
import pytest
import ray  # a hard dependency: a broken Ray fails here, never skips

from mmray.errors import StoreError  # noqa: E402
from mmray.store import FeatureGroupSink, fsio, training_dataset, writer  # noqa: E402

# starts Ray (a module fixture): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def commits(monkeypatch):
    """Record every commit, checking that all parts landed before the manifest."""
    calls = []
    real = writer.commit

    def checked(fs, root, **kw):
        vdir = posixpath.join(root, kw["group"], kw["version"])
        assert not fsio.exists(fs, posixpath.join(vdir, "_manifest.json"))
        assert all(fsio.exists(fs, posixpath.join(vdir, p["path"])) for p in kw["parts"])
        calls.append(kw)
        return real(fs, root, **kw)

    monkeypatch.setattr(writer, "commit", checked)
    return calls


def test_sink_writes_bag_group_committed_once(store, make_tiles, commits):
    tiles = make_tiles(seed=5, slides=4)  # rows shuffled: slides straddle blocks
    ds = ray.data.from_pandas(tiles).repartition(3)
    sink = FeatureGroupSink(store, "tiles", kind="bag", bag_key="slide_id",
                            params={"encoder": "toy", "tile_px": 256})
    ds.write_datasink(sink)

    assert len(commits) == 1 and len(commits[0]["parts"]) == 3
    assert sink.version == "v0001" and store.latest("tiles") == "v0001"
    man = store.manifest("tiles")
    assert man == sink.manifest
    assert man["num_rows"] == len(tiles) and man["num_bags"] == 4
    assert man["params"] == {"encoder": "toy", "tile_px": 256}
    assert sorted(f["path"] for f in man["files"]) == [
        "part-00000-0000.parquet", "part-00001-0000.parquet", "part-00002-0000.parquet"]
    assert store.bags("tiles")["num_rows"].tolist() == [3, 5, 7, 9]
    got = store.read_bag("tiles", "S03").sort_values("x")
    want = tiles[tiles.slide_id == "S03"].sort_values("x")
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]))

    back = store.to_ray_dataset("tiles", columns=["slide_id", "x"]).to_pandas()
    assert len(back) == len(tiles) and back["x"].sum() == tiles["x"].sum()
    assert sorted(back["slide_id"].unique()) == ["S00", "S01", "S02", "S03"]


def test_failed_dataset_commits_nothing(store, make_expression, commits):
    store.write_table("expression", make_expression(seed=1))

    def explode(batch: pd.DataFrame) -> pd.DataFrame:
        if (batch["patient_id"] == "P004").any():
            raise ValueError("bad batch")
        return batch

    ds = ray.data.from_pandas(make_expression(seed=2)).repartition(3).map_batches(
        explode, batch_format="pandas")
    with pytest.raises(Exception, match="bad batch"):
        ds.write_datasink(FeatureGroupSink(store, "expression"))
    assert [c["version"] for c in commits] == ["v0001"]  # only write_table's commit
    assert store.versions("expression") == ["v0001"] and store.latest("expression") == "v0001"
    fs, root = store.filesystem
    assert fsio.files_under(fs, posixpath.join(root, "expression", "v0002")) == []


def test_sink_table_group_and_training_dataset(tmp_path, make_expression):
    from mmray.store import FeatureStore

    store = FeatureStore(tmp_path / "store")
    expr = make_expression(seed=3)
    ray.data.from_pandas(expr).repartition(2).write_datasink(FeatureGroupSink(store, "expression"))
    back = store.read_table("expression").sort_values(["patient_id", "event_time"])
    np.testing.assert_allclose(back["MKI67"], expr.sort_values(
        ["patient_id", "event_time"])["MKI67"])

    labels = pd.DataFrame({"patient_id": ["P000", "P404"], "event_time": ["2022-01-01"] * 2,
                           "event": [1, 0]})
    rows = training_dataset(store, labels, groups=["expression"]).take_all()
    assert [r["has_expression"] for r in rows] == [True, False]
    assert rows[1]["expression__MKI67"] is None or np.isnan(rows[1]["expression__MKI67"])
    with pytest.raises(StoreError, match="nothing is committed|the dataset was empty"):
        ray.data.from_pandas(expr).limit(0).write_datasink(FeatureGroupSink(store, "expression"))
    assert store.versions("expression") == ["v0001"] and store.gc(older_than_s=0) == []
