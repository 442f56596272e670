"""A writer that dies or fails midway never leaves a visible partial version."""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import textwrap

import pytest

from mmray.errors import StoreError
from mmray.store import FeatureStore, fsio, writer

# Writes two parts of a new bag version, says so, then waits to be killed.
_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np, pandas as pd
    from mmray.store import FeatureStore

    store = FeatureStore(sys.argv[1])
    rng = np.random.default_rng(0)
    v = store.open_version("tiles", kind="bag", bag_key="slide_id", params={"run": "doomed"})
    for i in range(2):
        v.write_part(pd.DataFrame({
            "slide_id": f"X{i}", "patient_id": "P900", "event_time": "2022-01-01",
            "x": np.arange(5), "embedding": list(rng.normal(size=(5, 4)).astype("float32"))}))
    print("WROTE", v.version, flush=True)
    time.sleep(120)
""")


def _run_until_killed(store_uri: str) -> str:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, store_uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("WROTE"), proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return line.split()[1]


@pytest.mark.integration  # starts a writer process and SIGKILLs it
@pytest.mark.drill
def test_sigkilled_writer_leaves_previous_version_readable(store, make_tiles):
    tiles = make_tiles(seed=4)
    store.write_table("tiles", tiles, kind="bag", bag_key="slide_id")

    partial = _run_until_killed(store.uri)

    assert partial == "v0002"
    fs, root = store.filesystem
    written = [i.path for i in fsio.files_under(fs, posixpath.join(root, "tiles", partial))]
    assert len([p for p in written if p.endswith(".parquet")]) == 2  # the parts did land
    fresh = FeatureStore(store.uri)  # a new reader: nothing cached
    assert fresh.versions("tiles") == ["v0001"] and fresh.latest("tiles") == "v0001"
    assert fresh.groups() == ["tiles"]
    assert fresh.bag_ids("tiles") == ["S00", "S01", "S02", "S03"]
    assert len(fresh.read_bag("tiles", "S03")) == 9
    with pytest.raises(StoreError, match="no committed version 'v0002'"):
        fresh.read_table("tiles", version="v0002")

    # the next write skips the abandoned id; gc removes the partial folder only
    assert fresh.write_table("tiles", tiles, kind="bag", bag_key="slide_id") == "v0003"
    assert fresh.latest("tiles") == "v0003"
    assert fresh.gc(older_than_s=0) == ["tiles/v0002"]
    assert fresh.versions("tiles") == ["v0001", "v0003"]


def test_exception_inside_open_version_discards_it(store, make_expression):
    store.write_table("expression", make_expression(seed=1))
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with store.open_version("expression", params={"try": 2}) as v:
            v.write_part(make_expression(seed=2))
            raise RuntimeError("encoder crashed")
    assert v.version == "v0002"
    assert store.versions("expression") == ["v0001"] and store.latest("expression") == "v0001"
    fs, root = store.filesystem
    assert not fsio.exists(fs, posixpath.join(root, "expression", "v0002", "_manifest.json"))
    assert fsio.files_under(fs, posixpath.join(root, "expression", "v0002")) == []
    assert len(store.read_table("expression")) == 12


def test_empty_version_is_not_committed(store, make_expression):
    with pytest.raises(StoreError, match="nothing was written, so nothing is committed"):
        with store.open_version("expression"):
            pass
    assert store.versions("expression") == [] and store.groups() == []


def test_commit_refuses_when_another_writer_took_the_version(store, make_expression):
    store.write_table("expression", make_expression())
    v = store.open_version("expression")
    v.write_part(make_expression(seed=3))
    fs, root = store.filesystem
    fsio.put_json(fs, posixpath.join(root, "expression", v.version, "_writer.json"),
                  {"token": "someone-else"})
    with pytest.raises(StoreError, match="another writer took over"):
        v.commit()
    assert store.versions("expression") == ["v0001"] and store.latest("expression") == "v0001"


def test_io_failure_mid_write_is_a_store_error_naming_the_version(tmp_path, make_expression):
    store = FeatureStore(str(tmp_path / "store"))
    store.write_table("expression", make_expression())
    v = store.open_version("expression")
    fs, root = store.filesystem
    vdir = posixpath.join(root, "expression", v.version)
    fs.delete_dir(vdir)
    (tmp_path / "store" / "expression" / v.version).write_text("a file where the folder was")
    with pytest.raises(StoreError) as e:
        v.write_part(make_expression(seed=5), part_name="p1")
    msg = str(e.value)
    assert msg.startswith(f"group 'expression' version {v.version}, part 'p1': writing {vdir}/p1.parquet failed")
    assert "nothing of this version is committed" in msg and "run the write again" in msg
    assert isinstance(e.value.__cause__, OSError)
    assert store.versions("expression") == ["v0001"]


def test_abort_never_deletes_a_version_whose_manifest_landed(store, make_expression):
    store.write_table("expression", make_expression())
    v = store.open_version("expression")
    v.write_part(make_expression(seed=6))
    fs, root = store.filesystem
    # the manifest lands behind the writer's back, as when only its latest-pointer write failed
    writer.commit(fs, root, group="expression", version=v.version, token=v._token, kind="table", bag_key=None,
                  parts=v._parts, sources=[], params={})
    v.abort()
    assert store.versions("expression") == ["v0001", v.version]
    assert len(FeatureStore(store.uri).read_table("expression", version=v.version)) == 12
