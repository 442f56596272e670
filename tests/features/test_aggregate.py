"""Mean pooling and extremum encoding on hand-made embeddings, with the coordinates of each extremum."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmray.features.aggregate import aggregate_columns, combine, empty, pool, pooled_from_table

# Four tiles, three dimensions; coordinates are level-0 (x, y).
EMB = np.array([[1.0, 5.0, -2.0],
                [3.0, 0.0, -1.0],
                [2.0, 7.0, -9.0],
                [0.0, 1.0, 4.0]], np.float32)
X = np.array([0, 256, 0, 512])
Y = np.array([0, 0, 256, 256])


def test_pool_mean_max_min_and_their_coordinates():
    p = pool(EMB, X, Y)
    assert p.n == 4
    np.testing.assert_allclose(p.mean, [1.5, 3.25, -2.0])
    np.testing.assert_array_equal(p.max, [3.0, 7.0, 4.0])
    np.testing.assert_array_equal(p.min, [0.0, 0.0, -9.0])
    # dim 0 max 3 at tile (256, 0); dim 1 max 7 at (0, 256); dim 2 max 4 at (512, 256)
    np.testing.assert_array_equal(p.argmax_x, [256, 0, 512])
    np.testing.assert_array_equal(p.argmax_y, [0, 256, 256])
    # dim 0 min 0 at (512, 256); dim 1 min 0 at (256, 0); dim 2 min -9 at (0, 256)
    np.testing.assert_array_equal(p.argmin_x, [512, 256, 0])
    np.testing.assert_array_equal(p.argmin_y, [256, 0, 256])


def test_pool_does_not_depend_on_row_order_and_ties_go_to_reading_order():
    perm = np.array([3, 1, 0, 2])
    a, b = pool(EMB, X, Y), pool(EMB[perm], X[perm], Y[perm])
    for f in ("mean", "max", "min", "argmax_x", "argmax_y", "argmin_x", "argmin_y"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    ties = np.array([[1.0], [1.0], [1.0]], np.float32)
    p = pool(ties[[2, 0, 1]], np.array([0, 256, 0]), np.array([256, 0, 0]))  # reading order: (0,0), (256,0), (0,256)
    assert (p.argmax_x[0], p.argmax_y[0]) == (0, 0) and (p.argmin_x[0], p.argmin_y[0]) == (0, 0)


def test_empty_and_bad_shapes():
    p = pool(np.zeros((0, 3), np.float32), [], [])
    assert p.n == 0 and np.isnan(p.mean).all() and (p.argmax_x == -1).all()
    with pytest.raises(ValueError, match="one entry per tile"):
        pool(EMB, X[:3], Y)


def test_combine_is_exact_over_the_union_of_tiles_and_names_the_slide():
    a = pool(EMB[:3], X[:3], Y[:3])  # slide A: tiles 0-2
    b = pool(EMB[3:], X[3:] + 1000, Y[3:])  # slide B: tile 3, at another place
    c = combine({"B": b, "A": a, "EMPTY": empty(3)}, 3)
    assert c.n == 4
    np.testing.assert_allclose(c.mean, EMB.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(c.max, [3.0, 7.0, 4.0])
    np.testing.assert_array_equal(c.min, [0.0, 0.0, -9.0])
    assert list(c.argmax_slide) == ["A", "A", "B"] and list(c.argmin_slide) == ["B", "A", "A"]
    np.testing.assert_array_equal(c.argmax_x, [256, 0, 1512])
    np.testing.assert_array_equal(c.argmin_x, [1512, 256, 0])
    np.testing.assert_array_equal(c.argmin_y, [256, 0, 256])
    tie = combine({"S2": pool(EMB[:1], [5], [5]), "S1": pool(EMB[:1], [7], [7])}, 3)
    assert list(tie.argmax_slide) == ["S1"] * 3  # ties: first slide id


def test_flat_columns_round_trip_through_arrow():
    rows = [{"tile": pool(EMB, X, Y), "region": pool(EMB[:1], [0], [0])}, {"tile": pool(EMB[1:], X[1:], Y[1:])}]
    cols = aggregate_columns(rows, dim=3)
    table = pa.table(cols)
    assert table.column("tile_max_1").to_pylist() == [7.0, 7.0]
    assert table.column("tile_mean_0").type == pa.float32()
    assert table.column("n_tiles").to_pylist() == [4, 3] and table.column("n_regions").to_pylist() == [1, 0]
    assert table.column("tile_argmax_x").to_pylist()[0] == [256, 0, 512]
    assert np.isnan(table.column("region_mean_0").to_pylist()[1])  # no regions: NaN and -1
    assert table.column("region_argmin_y").to_pylist()[1] == [-1, -1, -1]
    back = pooled_from_table(table, scale="tile", dim=3)
    np.testing.assert_array_equal(back[0].min, [0.0, 0.0, -9.0])
    np.testing.assert_array_equal(back[1].argmin_x, [512, 256, 0])
    expected = {f"tile_{s}_{i}" for s in ("mean", "max", "min") for i in range(3)}
    assert expected <= set(table.column_names)
