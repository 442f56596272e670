"""The 4096 level: tile embeddings laid on region grids, grid crops, and the region group written from a store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from mmray.models.hipt import FeatureGridViT
from mmray.store import FeatureStore
from mmray.train.pretrain.regions import crop_grid, region_grids, write_region_group

D = 4


def _slide_frame(sid="S1", pid="P1", *, regions=((0, 0, 7), (512, 0, 8)), tiles=None, rng=None):
    rng = rng or np.random.default_rng(0)
    tiles = tiles if tiles is not None else [(0, 0, 7), (128, 0, 7), (0, 128, 7), (640, 384, 8)]
    rows = []
    for x, y, rid in regions:
        rows.append({"scale": "region", "x": x, "y": y, "region_id": rid, "size_l0": 512, "tile_px": 512,
                     "embedding": rng.normal(size=D).astype(np.float32)})
    for x, y, rid in tiles:
        rows.append({"scale": "tile", "x": x, "y": y, "region_id": rid, "size_l0": 128, "tile_px": 128,
                     "embedding": rng.normal(size=D).astype(np.float32)})
    df = pd.DataFrame(rows)
    return df.assign(slide_id=sid, patient_id=pid, event_time=pd.Timestamp("2020-01-01", tz="UTC"), mpp=2.0)


def test_region_grids_place_each_tile_at_its_level0_cell_and_leave_empty_cells_zero():
    df = _slide_frame()
    grids, meta = region_grids(df)
    tiles = df[df["scale"] == "tile"].reset_index(drop=True)
    assert grids.shape == (2, 4, 4, D)
    assert list(meta["region_id"]) == [7, 8] and list(meta["n_tiles"]) == [3, 1]
    np.testing.assert_array_equal(grids[0, 0, 0], tiles["embedding"][0])
    np.testing.assert_array_equal(grids[0, 0, 1], tiles["embedding"][1])  # x 128 -> column 1
    np.testing.assert_array_equal(grids[0, 1, 0], tiles["embedding"][2])  # y 128 -> row 1
    np.testing.assert_array_equal(grids[1, 3, 1], tiles["embedding"][3])  # (640-512)/128, 384/128
    assert np.count_nonzero(np.abs(grids[0]).sum(-1)) == 3
    grids2, meta2 = region_grids(df, min_tiles=2)
    assert list(meta2["region_id"]) == [7] and grids2.shape[0] == 1


def test_grid_crops_are_contiguous_windows_of_the_grid_or_their_mirror():
    x = torch.arange(2 * 4 * 4).float().reshape(2, 4, 4, 1)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        c = crop_grid(x, size=3, generator=g)
        assert c.shape == (2, 3, 3, 1)
        for b in range(2):
            found = [(oy, ox, flip) for oy in range(2) for ox in range(2) for flip in (False, True)
                     if torch.equal(c[b], x[b, oy:oy + 3, ox:ox + 3].flip(1) if flip else x[b, oy:oy + 3, ox:ox + 3])]
            assert found


def test_write_region_group_embeds_every_region_with_its_coordinates(tmp_path):
    st = FeatureStore(str(tmp_path / "store"))
    frames = [_slide_frame("S1", "P1"), _slide_frame("S2", "P2", regions=((0, 512, 3),), tiles=[(128, 640, 3)])]
    table = pd.concat(frames, ignore_index=True)
    emb = table.pop("embedding")
    t = pa.Table.from_pandas(table, preserve_index=False).append_column(
        "embedding", pa.array([list(map(float, e)) for e in emb], pa.list_(pa.float32())))
    st.write_table("wsi_tiles", t, kind="bag", bag_key="slide_id",
                   params={"embed_key": {"encoder_id": "cnn_small@sha256:x"}})
    torch.manual_seed(0)
    vit = FeatureGridViT(D, embed_dim=6, depth=1, heads=2, grid=4)
    version = write_region_group(st, vit, slide_ids=["S1", "S2"], version=st.latest("wsi_tiles"), key="k",
                                 encoder_id="vit4k@sha256:y", tile_encoder_id="cnn_small@sha256:x")
    out = st.read_bag("wsi_regions_hipt", "S1", version=version)
    assert list(out["region_id"]) == [7, 8] and list(out["x"]) == [0, 512] and set(out["size_l0"]) == {512}
    grids, _ = region_grids(frames[0])
    with torch.inference_mode():
        want = vit.eval()(torch.from_numpy(grids)).numpy()
    np.testing.assert_allclose(np.stack(out["embedding"].to_numpy()), want, rtol=1e-5, atol=1e-6)
    s2 = st.read_bag("wsi_regions_hipt", "S2", version=version)
    assert list(s2["y"]) == [512] and list(s2["n_tiles"]) == [1]
    assert st.manifest("wsi_regions_hipt")["params"]["tile_encoder_id"] == "cnn_small@sha256:x"
    assert "scale" not in out  # the MIL readers take every row as one instance
