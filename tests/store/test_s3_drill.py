"""Drill: SIGKILL the S3 server (SeaweedFS) in the middle of a feature-group write, start it again.

The write is a bag group version of many files, written by a separate process
(``open_version`` + one ``write_part`` per slide, as the slide aggregates stage
writes). When part of its files landed, the ``weed`` process is SIGKILLed; the
writer must fail within seconds with a :class:`~mmray.errors.StoreError` naming
the group, version and what to do. The server is started again on the same
data dir and ports: the previous version reads back equal, the partial one was
never visible, a rerun commits, and ``gc`` removes what the killed write left.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from mmray.errors import StoreError
from mmray.store import FeatureStore

pytestmark = [pytest.mark.integration, pytest.mark.drill]

N_PARTS, KILL_AFTER = 400, 60  # ~20 ms a part on SeaweedFS: the kill lands ~1 s into an ~8 s write

# Writes N slides as one bag version, one part per slide (seeded: a rerun writes the same rows);
# prints each part as it lands. A StoreError is printed whole on one line, then exit 2.
_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np, pandas as pd
    from mmray.errors import StoreError
    from mmray.store import FeatureStore

    def slide(i):
        rng = np.random.default_rng(i)
        return pd.DataFrame({"slide_id": f"S{i:04d}", "patient_id": f"P{i:04d}", "event_time": "2022-01-01",
                             "x": np.arange(200), "embedding": list(rng.normal(size=(200, 64)).astype("float32"))})

    store, n = FeatureStore(sys.argv[1]), int(sys.argv[2])
    try:
        with store.open_version("tiles", kind="bag", bag_key="slide_id", params={"n": n}) as v:
            print("OPEN", v.version, flush=True)
            for i in range(n):
                v.write_part(slide(i), part_name=f"slide-{i:04d}")
                print("PART", i, flush=True)
    except StoreError as e:
        print("FAILED", time.time(), " ".join(str(e).split()), flush=True)
        sys.exit(2)
    print("COMMITTED", v.version, flush=True)
""")


def _slide(i: int) -> pd.DataFrame:
    rng = np.random.default_rng(i)
    return pd.DataFrame({"slide_id": f"S{i:04d}", "patient_id": f"P{i:04d}", "event_time": "2022-01-01",
                         "x": np.arange(200), "embedding": list(rng.normal(size=(200, 64)).astype("float32"))})


def _writer(uri: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, uri, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _all_bags(store: FeatureStore, version: str | None = None) -> pd.DataFrame:
    df = store.read_table("tiles", version=version)
    df["embedding"] = df["embedding"].map(lambda a: np.asarray(a).tolist())
    return df.sort_values(["slide_id", "x"]).reset_index(drop=True)


def _keys(s3, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.server.bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))


def _open_uploads(s3, prefix: str) -> list[str]:
    """Multipart uploads begun and never completed (invisible to listings and readers)."""
    import boto3

    got = boto3.client("s3").list_multipart_uploads(Bucket=s3.server.bucket, Prefix=prefix)
    return sorted(u["Key"][len(prefix):] for u in got.get("Uploads", []))


def test_s3_server_killed_mid_write(restartable_s3):
    s3 = restartable_s3
    uri = f"s3://{s3.server.bucket}/drill"
    store = FeatureStore(uri)
    with store.open_version("tiles", kind="bag", bag_key="slide_id", params={"n": 12}) as v:
        for i in range(12):
            v.write_part(_slide(i), part_name=f"slide-{i:04d}")
    before = _all_bags(store)
    assert store.latest("tiles") == "v0001" and len(before) == 12 * 200

    proc = _writer(uri, N_PARTS)
    try:
        assert proc.stdout.readline().split() == ["OPEN", "v0002"], proc.stderr.read()
        for line in proc.stdout:
            if line.split() == ["PART", str(KILL_AFTER - 1)]:
                # mid-write, with the server still up: no reader sees the open version
                assert FeatureStore(uri).versions("tiles") == ["v0001"]
                assert FeatureStore(uri).latest("tiles") == "v0001"
                s3.kill()
                killed_at = time.time()
                break
        else:
            pytest.fail(f"the writer ended before part {KILL_AFTER}: {proc.stderr.read()[-3000:]}")
        out, err = proc.communicate(timeout=120)  # bounded retries: a dead server ends the write in seconds
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert proc.returncode == 2 and failed, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    _, fail_time, message = failed[0].split(" ", 2)
    seconds_to_fail = float(fail_time) - killed_at
    parts_reported = sum(line.startswith("PART") for line in out.splitlines()) + KILL_AFTER
    assert message.startswith("group 'tiles' version v0002, part 'slide-0"), message
    assert "nothing of this version is committed" in message and "run the write again" in message, message
    assert "Traceback" not in err and "botocore" not in message, err[-3000:]

    start = time.monotonic()
    s3.start()
    restart_s = time.monotonic() - start

    fresh = FeatureStore(uri)  # nothing cached
    assert fresh.versions("tiles") == ["v0001"] and fresh.latest("tiles") == "v0001"
    assert fresh.groups() == ["tiles"]
    pd.testing.assert_frame_equal(_all_bags(fresh), before)
    with pytest.raises(StoreError, match="no committed version 'v0002'"):
        fresh.read_table("tiles", version="v0002")
    left = _keys(s3, "drill/tiles/v0002/")
    parts_left = [k for k in left if k.endswith(".parquet")]
    assert "_manifest.json" not in left and "_bag_index.parquet" not in left, left
    assert KILL_AFTER <= len(parts_left) <= parts_reported + 1, (len(parts_left), parts_reported)
    uploads = _open_uploads(s3, "drill/tiles/v0002/")  # the part in flight at the kill, if any
    assert len(uploads) <= 1 and not set(uploads) & set(parts_left), (uploads, parts_left)

    start = time.monotonic()
    proc = _writer(uri, N_PARTS)
    out, err = proc.communicate(timeout=300)
    rerun_s = time.monotonic() - start
    assert proc.returncode == 0 and out.splitlines()[-1] == "COMMITTED v0003", f"{out[-2000:]}\n{err[-3000:]}"
    again = FeatureStore(uri)
    assert again.versions("tiles") == ["v0001", "v0003"] and again.latest("tiles") == "v0003"
    assert again.bag_ids("tiles") == [f"S{i:04d}" for i in range(N_PARTS)]
    for i in (0, KILL_AFTER, N_PARTS - 1):  # rows written across the kill point read back exactly
        got = again.read_bag("tiles", f"S{i:04d}")
        np.testing.assert_array_equal(np.stack(got["embedding"]), np.stack(_slide(i)["embedding"]))
    pd.testing.assert_frame_equal(_all_bags(again, "v0001"), before)

    assert again.gc(older_than_s=0) == ["tiles/v0002"]
    assert _keys(s3, "drill/tiles/v0002/") == [] and _open_uploads(s3, "drill/tiles/v0002/") == []
    assert again.versions("tiles") == ["v0001", "v0003"]
    print(f"\nS3 drill: SeaweedFS SIGKILLed after {parts_reported} part(s) reported, {len(parts_left)} of "
          f"{N_PARTS} part files of v0002 on S3 after restart ({len(left)} objects: {left[:2]} ... {left[-1]}; "
          f"unfinished multipart uploads: {uploads}); writer failed "
          f"{seconds_to_fail:.1f} s after the kill with: {message}\n"
          f"restart {restart_s:.1f} s; rerun of the {N_PARTS}-part write {rerun_s:.1f} s -> v0003")
