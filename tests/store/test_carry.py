"""Carry-forward of bags: a new version references earlier files instead of copying them."""

from __future__ import annotations

import os
import posixpath

import numpy as np
import pytest

from mmray.errors import StoreError
from mmray.store import fsio


def _write_v1(store, make_tiles):
    tiles = make_tiles(seed=1, slides=4)  # S00..S03, 3/5/7/9 rows
    with store.open_version("tiles", kind="bag", bag_key="slide_id") as v:
        v.write_part(tiles[tiles["slide_id"].isin(["S00", "S01"])], part_name="a")
        v.write_part(tiles[tiles["slide_id"].isin(["S02", "S03"])], part_name="b")
    return tiles


def _sorted(df):
    return df.sort_values(["slide_id", "x"]).reset_index(drop=True)


def test_carried_files_are_referenced_not_copied(store, make_tiles):
    tiles = _write_v1(store, make_tiles)
    new = make_tiles(seed=2, slides=6)
    new = new[new["slide_id"].isin(["S04", "S05"])]
    with store.open_version("tiles", kind="bag", bag_key="slide_id", params={"run": 2}) as v:
        assert v.carry_bags("v0001", ["S00", "S01", "S02", "S03"]) == 4
        v.write_part(new, part_name="new")
    man = store.manifest("tiles")
    assert man["version"] == "v0002" and man["num_bags"] == 6
    assert man["num_rows"] == len(tiles) + len(new)
    paths = sorted(f["path"] for f in man["files"])
    assert paths == ["../v0001/a.parquet", "../v0001/b.parquet", "new.parquet"]
    assert {f["path"]: f.get("carried_from") for f in man["files"]}["../v0001/a.parquet"] == "v0001"
    fs, root = store.filesystem
    # nothing was copied: the new version's folder holds only its own part
    own = sorted(posixpath.basename(i.path) for i in fsio.files_under(fs, posixpath.join(root, "tiles", "v0002")))
    assert own == ["_bag_index.parquet", "_manifest.json", "new.parquet"]
    # every reader sees the carried rows
    assert store.bags("tiles")["num_rows"].tolist() == [3, 5, 7, 9, 11, 13]
    got = store.read_bag("tiles", "S02")
    want = tiles[tiles["slide_id"] == "S02"]
    assert sorted(got["x"]) == sorted(want["x"])
    np.testing.assert_array_equal(np.stack(_sorted(got)["embedding"]), np.stack(_sorted(want)["embedding"]))
    assert len(store.read_table("tiles")) == len(tiles) + len(new)
    assert all(fsio.exists(fs, p) for p in store.files("tiles"))


def test_carry_from_a_mixed_file_copies_only_the_carried_row_groups(store, make_tiles):
    tiles = _write_v1(store, make_tiles)
    with store.open_version("tiles", kind="bag", bag_key="slide_id") as v:
        v.carry_bags("v0001", ["S00", "S01", "S02"])  # S03 dropped: file b is mixed
    man = store.manifest("tiles")
    paths = sorted(f["path"] for f in man["files"])
    assert paths == ["../v0001/a.parquet", "carried-v0001-00001.parquet"]
    assert store.bag_ids("tiles") == ["S00", "S01", "S02"]
    table = store.read_table("tiles")  # whole-file readers must not see S03
    assert sorted(table["slide_id"].unique()) == ["S00", "S01", "S02"]
    assert len(table) == (tiles["slide_id"] != "S03").sum()
    # carrying again from v0002 keeps pointing at the file's real home
    with store.open_version("tiles", kind="bag", bag_key="slide_id") as v:
        v.carry_bags("v0002", ["S00", "S01", "S02"])
    assert sorted(f["path"] for f in store.manifest("tiles")["files"]) == [
        "../v0001/a.parquet", "../v0002/carried-v0001-00001.parquet"]
    assert len(store.read_bag("tiles", "S01")) == 5


def test_carry_refuses_unknown_bags_and_double_writes(store, make_tiles):
    tiles = _write_v1(store, make_tiles)
    v = store.open_version("tiles", kind="bag", bag_key="slide_id")
    with pytest.raises(StoreError, match="not in 'tiles' v0001.*S99"):
        v.carry_bags("v0001", ["S00", "S99"])
    v.carry_bags("v0001", ["S00"])
    with pytest.raises(StoreError, match="carried from an earlier version"):
        v.write_part(tiles[tiles["slide_id"] == "S00"])
    v.abort()
    t = store.open_version("table_group")
    with pytest.raises(StoreError, match="only bag groups"):
        t.carry_bags("v0001", ["S00"])
    t.abort()


def test_gc_never_deletes_files_a_committed_version_references(store, make_tiles):
    tiles = _write_v1(store, make_tiles)
    with store.open_version("tiles", kind="bag", bag_key="slide_id") as v:
        v.carry_bags("v0001", ["S00", "S01"])  # references ../v0001/a.parquet
    fs, root = store.filesystem
    # v0001 loses its manifest (a damaged store): its folder now looks partial
    fs.delete_file(posixpath.join(root, "tiles", "v0001", "_manifest.json"))
    assert store.versions("tiles") == ["v0002"]
    assert store.gc(older_than_s=0) == ["tiles/v0001"]
    assert fsio.exists(fs, posixpath.join(root, "tiles", "v0001", "a.parquet"))  # referenced: kept
    assert not fsio.exists(fs, posixpath.join(root, "tiles", "v0001", "b.parquet"))  # not: removed
    assert len(store.read_bag("tiles", "S01")) == 5
    assert len(store.read_table("tiles")) == tiles["slide_id"].isin(["S00", "S01"]).sum()


def test_manifest_paths_outside_the_group_are_refused(tmp_path, make_tiles):
    from mmray.store import FeatureStore, layout

    store = FeatureStore(tmp_path / "s")
    _write_v1(store, make_tiles)
    for bad in ("/etc/passwd.parquet", "../../other/v0001/a.parquet", "../v0001/../x.parquet"):
        with pytest.raises(StoreError, match="manifest is damaged"):
            layout.data_path(str(tmp_path), "tiles", "v0002", bad)
    assert layout.data_path("r", "tiles", "v0002", "../v0001/a.parquet") == "r/tiles/v0001/a.parquet"
    assert os.path.basename(store.files("tiles")[0]) == "a.parquet"
