"""Sampled bag reads: the rows a whole-bag read would draw, read from the drawn row groups only, in batches."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from mmray.errors import StoreError
from mmray.store import FeatureStore
from mmray.store.bag_sample import BagSampler, sample_positions

DIM = 32


def _bag(slide: str, patient: str, n: int, *, rng) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": patient, "event_time": "2020-01-01", "slide_id": slide,
                         "scale": np.where(np.arange(n) % 10 == 0, "region", "tile"),
                         "x": np.arange(n, dtype=np.int64) * 256, "y": np.full(n, 7, np.int64),
                         "embedding": list(rng.standard_normal((n, DIM)).astype(np.float32))})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Patient P1 has slides s1 (3 parts) and s2; P2 has s3. 600 + 900 + 50 rows, every 10th a region."""
    rng = np.random.default_rng(0)
    st = FeatureStore(str(tmp_path_factory.mktemp("bags") / "store"))
    s1, s2, s3 = _bag("s1", "P1", 600, rng=rng), _bag("s2", "P1", 900, rng=rng), _bag("s3", "P2", 50, rng=rng)
    with st.open_version("wsi_tiles", kind="bag", bag_key="slide_id") as v:
        v.write_part(pd.concat([s1.iloc[:250], s3]), part_name="a")
        v.write_part(pd.concat([s1.iloc[250:500], s2]), part_name="b")
        v.write_part(s1.iloc[500:], part_name="c")
    return st


def _whole_bag_sample(store, bags, *, key, max_rows, seed):
    """The reference: whole bags read, tiles kept, then the per-key seeded draw over their concatenation."""
    frames = [store.read_bag("wsi_tiles", b) for b in bags]
    tiles = pd.concat([f[f["scale"] == "tile"] for f in frames])
    emb = np.stack(tiles["embedding"].to_numpy()).astype(np.float32)
    if max_rows and len(emb) > max_rows:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        pick = np.sort(rng.choice(len(emb), max_rows, replace=False))
        return emb[pick], tiles["x"].to_numpy()[pick]
    return emb, tiles["x"].to_numpy()


@pytest.mark.parametrize("max_rows, seed", [(100, 0), (100, 1), (5000, 0), (None, 0)])
def test_sample_equals_drawing_from_the_whole_bag(store, max_rows, seed):
    sampler = BagSampler(store, "wsi_tiles", batch_rows=64)
    got = sampler.sample(["s1", "s2"], columns=["embedding", "x"], key="P1", max_rows=max_rows, seed=seed,
                         where={"scale": "tile"})
    emb, x = _whole_bag_sample(store, ["s1", "s2"], key="P1", max_rows=max_rows, seed=seed)
    assert got["embedding"].dtype == np.float32 and got["embedding"].shape == emb.shape
    np.testing.assert_array_equal(got["embedding"], emb)
    np.testing.assert_array_equal(got["x"], x)
    assert len(got["x"]) == min(max_rows or 10**9, 1350)  # 1500 rows, 150 regions


def test_seeds_and_keys_draw_different_samples():
    a = sample_positions(1000, max_rows=50, seed=0, key="P1")
    assert len(a) == 50 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, sample_positions(1000, max_rows=50, seed=1, key="P1"))
    assert not np.array_equal(a, sample_positions(1000, max_rows=50, seed=0, key="P2"))
    np.testing.assert_array_equal(sample_positions(30, max_rows=50, seed=0, key="P1"), np.arange(30))


def test_reads_only_drawn_row_groups_in_bounded_batches(store, monkeypatch):
    """Embeddings stream in batches of batch_rows; a row group nothing was drawn from is never opened for them."""
    sampler = BagSampler(store, "wsi_tiles", batch_rows=64)
    seen = []
    original = sampler._batches

    def spy(path, row_group, columns):
        for batch in original(path, row_group, columns):
            if "embedding" in columns:
                seen.append((path, row_group, batch.num_rows))
            yield batch

    monkeypatch.setattr(sampler, "_batches", spy)
    got = sampler.sample(["s2", "s1"], columns=["embedding"], key="P1", max_rows=3, seed=0, where={"scale": "tile"})
    assert got["embedding"].shape == (3, DIM)
    assert {rg for _, rg, _ in seen} <= {1, 0} and max(n for _, _, n in seen) <= 64
    drawn_groups = {(p, rg) for p, rg, _ in seen}
    assert len(drawn_groups) <= 3  # 3 rows drawn: at most 3 of the 4 row groups holding s1/s2 are read


def test_unknown_bags_and_columns_are_named(store):
    sampler = BagSampler(store, "wsi_tiles")
    with pytest.raises(StoreError, match="no bag 'nope'"):
        sampler.sample(["nope"], columns=["embedding"], key="P")
    with pytest.raises(StoreError, match=r"no column\(s\) \['emb'\]"):
        sampler.sample(["s1"], columns=["emb"], key="P")
    assert sampler.sample(["s3"], columns=["embedding"], key="P2", where={"scale": "nothing"}) is None
