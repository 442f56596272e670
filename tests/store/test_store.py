"""FeatureStore on a local folder and on a real S3 server: round trips, versions, lineage."""

from __future__ import annotations

import datetime as dt
import hashlib
import pickle
import posixpath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mmray.errors import MmrayError, StoreError
from mmray.store import FeatureStore


def _utc(values) -> pd.Series:
    return pd.Series(pd.to_datetime(values, utc=True)).dt.as_unit("us")


def _file_bytes(store: FeatureStore, group: str, version: str) -> dict[str, bytes]:
    fs, _ = store.filesystem
    out = {}
    for path in store.files(group, version=version):
        with fs.open_input_stream(path) as f:
            out[path] = f.read()
    return out


def test_table_round_trip_with_lineage(store, make_expression, tmp_path):
    df = make_expression(seed=1)
    src_a, src_b = tmp_path / "expr.tsv", tmp_path / "genes.gmt"
    src_a.write_bytes(b"gene\tP000\nMKI67\t1.5\n")
    src_b.write_bytes(b"SIG\tna\tMKI67\tESR1\n")
    version = store.write_table("expression", df, sources=[src_a, str(src_b)],
                                params={"normalise": "log1p", "min_count": 10})
    assert version == "v0001"

    back = store.read_table("expression")
    assert list(back.columns) == ["patient_id", "event_time", "MKI67", "ESR1", "ERBB2"]
    pd.testing.assert_series_equal(back["event_time"], _utc(df["event_time"]),
                                   check_names=False)
    np.testing.assert_array_equal(back["patient_id"], df["patient_id"])
    np.testing.assert_allclose(back[["MKI67", "ESR1", "ERBB2"]], df[["MKI67", "ESR1", "ERBB2"]])
    assert list(store.read_table("expression", columns=["patient_id", "ESR1"]).columns) == [
        "patient_id", "ESR1"]

    man = store.manifest("expression")
    assert (man["group"], man["version"], man["kind"]) == ("expression", "v0001", "table")
    assert man["key_columns"] == ["patient_id", "event_time"] and man["bag_key"] is None
    assert man["num_rows"] == len(df) == sum(f["num_rows"] for f in man["files"])
    assert {c["name"]: c["type"] for c in man["columns"]}["event_time"] == "timestamp[us, tz=UTC]"
    assert man["params"] == {"normalise": "log1p", "min_count": 10}
    assert [s["sha256"] for s in man["sources"]] == [
        hashlib.sha256(src_a.read_bytes()).hexdigest(), hashlib.sha256(src_b.read_bytes()).hexdigest()]
    assert [s["size_bytes"] for s in man["sources"]] == [src_a.stat().st_size, src_b.stat().st_size]
    created = dt.datetime.fromisoformat(man["created_utc"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 120
    assert man["mmray_version"]
    assert man["git_revision"] is None or len(man["git_revision"]) == 40


def test_s3_source_is_recorded_with_its_etag(s3_env, s3_server, make_expression):
    from mmray.uri import s3_client

    client = s3_client()
    key = s3_env.split("/", 3)[3] + "/raw/clinical.csv"
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"patient_id,age\nP000,61\n")
    etag = client.head_object(Bucket=s3_server.bucket, Key=key)["ETag"].strip('"')
    store = FeatureStore(s3_env + "/store")
    store.write_table("clinical", make_expression(), sources=[f"s3://{s3_server.bucket}/{key}"])
    (src,) = store.manifest("clinical")["sources"]
    assert src == {"uri": f"s3://{s3_server.bucket}/{key}", "size_bytes": 23, "etag": etag}


def test_bag_round_trip_reads_one_bag_from_its_row_group(store, make_tiles):
    tiles = make_tiles(seed=2, slides=4)
    store.write_table("tiles", tiles, kind="bag", bag_key="slide_id", params={"encoder": "toy"})

    bags = store.bags("tiles")
    assert bags["bag_id"].tolist() == ["S00", "S01", "S02", "S03"] == store.bag_ids("tiles")
    assert bags["num_rows"].tolist() == [3, 5, 7, 9]
    assert bags["patient_id"].tolist() == ["P000", "P000", "P001", "P001"]

    one = store.read_bag("tiles", "S02").sort_values("x").reset_index(drop=True)
    want = tiles[tiles.slide_id == "S02"].sort_values("x").reset_index(drop=True)
    assert len(one) == 7 and set(one["slide_id"]) == {"S02"}
    np.testing.assert_array_equal(one["x"], want["x"])
    np.testing.assert_allclose(np.stack(one["embedding"]), np.stack(want["embedding"]))
    assert list(store.read_bag("tiles", "S01", columns=["x"]).columns) == ["x"]

    man = store.manifest("tiles")
    assert (man["kind"], man["bag_key"], man["num_bags"], man["num_rows"]) == ("bag", "slide_id", 4, 24)
    fs, _ = store.filesystem
    (path,) = store.files("tiles")
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    # one row group per bag, in bag order: reading a bag touches only its row group
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [3, 5, 7, 9]
    assert len(store.read_table("tiles")) == 24


def test_streamed_bag_split_across_parts(store, make_tiles):
    tiles = make_tiles(seed=3, slides=3)
    with store.open_version("tiles", kind="bag", bag_key="slide_id") as v:
        v.write_part(tiles.iloc[:8], part_name="first")
        v.write_part(tiles.iloc[8:], part_name="second")
    man = store.manifest("tiles", version=v.version)
    assert [f["path"] for f in man["files"]] == ["first.parquet", "second.parquet"]
    for slide, n in tiles.slide_id.value_counts().items():
        got = store.read_bag("tiles", slide)
        assert len(got) == n
        assert sorted(got["x"]) == sorted(tiles.loc[tiles.slide_id == slide, "x"])


def test_versions_latest_pointer_and_immutability(store, make_expression):
    first, second = make_expression(seed=1), make_expression(seed=2)
    assert store.groups() == [] and store.latest("expression") is None
    assert store.write_table("expression", first) == "v0001"
    old_bytes = _file_bytes(store, "expression", "v0001")
    old_manifest = store.manifest("expression", version="v0001")
    assert store.write_table("expression", second) == "v0002"

    assert store.versions("expression") == ["v0001", "v0002"]
    assert store.latest("expression") == "v0002" and store.groups() == ["expression"]
    np.testing.assert_allclose(store.read_table("expression")["MKI67"], second["MKI67"])
    np.testing.assert_allclose(store.read_table("expression", version="v0001")["MKI67"],
                               first["MKI67"])
    assert _file_bytes(store, "expression", "v0001") == old_bytes
    assert FeatureStore(store.uri).manifest("expression", version="v0001") == old_manifest

    store.set_latest("expression", "v0001")  # roll back
    assert store.latest("expression") == "v0001"
    np.testing.assert_allclose(store.read_table("expression")["MKI67"], first["MKI67"])
    assert store.write_table("expression", first) == "v0003"
    assert store.latest("expression") == "v0003"


def test_latest_falls_back_when_pointer_missing(store, make_expression):
    store.write_table("expression", make_expression())
    store.write_table("expression", make_expression(seed=5))
    fs, root = store.filesystem
    fs.delete_file(posixpath.join(root, "expression", "_latest.json"))
    assert store.latest("expression") == "v0002"


@pytest.mark.parametrize("value", [
    "2021-03-04T05:06:07",
    dt.date(2021, 3, 4),
    dt.datetime(2021, 3, 4, 5, 6, 7),
    pd.Timestamp("2021-03-04 06:06:07", tz="Europe/Paris"),
])
def test_event_time_is_normalised_to_utc_microseconds(tmp_path, value):
    store = FeatureStore(tmp_path)
    store.write_table("clinical", pd.DataFrame({"patient_id": ["P1"], "event_time": [value],
                                                "age": [60]}))
    got = store.read_table("clinical")["event_time"]
    assert str(got.dtype) == "datetime64[us, UTC]"
    want = pd.Timestamp("2021-03-04", tz="UTC") if isinstance(value, dt.date) and not isinstance(
        value, dt.datetime) else pd.Timestamp("2021-03-04 05:06:07", tz="UTC")
    assert got.iloc[0] == want


def test_errors_name_group_version_and_fix(store, make_expression, make_tiles):
    store.write_table("expression", make_expression())
    store.write_table("tiles", make_tiles(), kind="bag", bag_key="slide_id")

    with pytest.raises(StoreError, match=r"no feature group 'radiomics'.*groups: \['expression', 'tiles'\]"):
        store.read_table("radiomics")
    with pytest.raises(StoreError, match=r"'expression' has no committed version 'v0007'.*\['v0001'\]"):
        store.read_table("expression", version="v0007")
    with pytest.raises(StoreError, match=r"no column\(s\) \['TP53'\]; columns: \["):
        store.read_table("expression", columns=["TP53"])
    with pytest.raises(StoreError, match=r"no bag slide_id='S99'; it has 4 bags, e.g. \['S00'"):
        store.read_bag("tiles", "S99")
    with pytest.raises(StoreError, match="is a table group; bags exist only"):
        store.read_bag("expression", "S00")
    with pytest.raises(StoreError, match="invalid group name 'bad/name'"):
        store.read_table("bad/name")
    with pytest.raises(StoreError, match="kind='bag' needs bag_key"):
        store.write_table("tiles", make_tiles(), kind="bag")
    with pytest.raises(StoreError, match=r"missing key column\(s\) \['patient_id'\].*reset_index"):
        store.write_table("expression", make_expression().set_index("patient_id"))
    with pytest.raises(StoreError, match=r"event_time has 1 missing value"):
        store.write_table("expression", make_expression().assign(
            event_time=[None] + ["2020-01-01"] * 11))
    with pytest.raises(StoreError, match="event_time must be timestamps.*got int64"):
        store.write_table("expression", make_expression().assign(event_time=range(12)))
    with pytest.raises(StoreError, match=r"duplicate key \(patient_id='P000'"):
        store.write_table("expression", pd.concat([make_expression()] * 2))
    with pytest.raises(StoreError, match="params must be JSON-serialisable"):
        store.write_table("expression", make_expression(), params={"f": object()})
    with pytest.raises(StoreError, match="source '/nonexistent/x.svs' does not exist"):
        store.write_table("expression", make_expression(), sources=["/nonexistent/x.svs"])
    # none of the failed writes became a version
    assert store.versions("expression") == ["v0001"] and store.versions("tiles") == ["v0001"]

    with pytest.raises(StoreError) as info:
        store.read_table("radiomics")
    err = pickle.loads(pickle.dumps(info.value))
    assert isinstance(err, MmrayError) and str(err) == str(info.value)


def test_gc_removes_only_stale_partial_versions(store, make_expression):
    store.write_table("expression", make_expression())
    writer = store.open_version("expression")
    writer.write_part(make_expression(seed=9))  # never committed: a partial version
    assert writer.version == "v0002"
    assert store.versions("expression") == ["v0001"]
    assert store.gc(older_than_s=3600) == []  # too fresh: could be a running writer
    assert store.gc(older_than_s=0, dry_run=True) == ["expression/v0002"]
    assert store.gc(older_than_s=0) == ["expression/v0002"]
    assert store.gc(older_than_s=0) == []
    assert store.versions("expression") == ["v0001"]
    assert len(store.read_table("expression")) == 12
