"""Nuclei without weights: deconvolution, counts on tiles with a known number of nuclei, sizes in um^2,
the nucleus graph, the per-slide aggregates and the tile sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2hed

from mmray.features import nuclei as N
from mmray.features.nuclei_aggregate import located_features, patient_table, slide_table
from mmray.features.nuclei_graph import TILE_FEATURES, graph_stats, nucleus_graph, tile_features
from mmray.features.nuclei_stage import sample_tiles

H_OD = np.array([0.65, 0.70, 0.29])  # Ruifrok & Johnston haematoxylin, eosin optical densities
E_OD = np.array([0.07, 0.99, 0.11])


def render(centres_um, radii_um, *, size_um: float, mpp: float, seed: int = 0, aspect: float = 1.3) -> np.ndarray:
    """(S, S, 3) uint8 H&E-like tile: eosin stroma with haematoxylin ellipses (Beer-Lambert), pixel noise."""
    rng = np.random.default_rng(seed)
    s = int(round(size_um / mpp))
    yy, xx = (np.mgrid[0:s, 0:s] + 0.5) * mpp
    h = np.zeros((s, s))
    for (cy, cx), r in zip(centres_um, radii_um):
        t = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / (r * aspect)
        v = ((yy - cy) * np.cos(t) - (xx - cx) * np.sin(t)) / (r / aspect)
        h = np.maximum(h, np.where(u * u + v * v < 1, rng.uniform(0.8, 1.2), 0.0))
    od = 0.35 * E_OD + h[..., None] * H_OD + 0.03 * rng.standard_normal((s, s, 1))
    return np.clip(255 * np.exp(-od), 0, 255).astype(np.uint8)


def scattered(n: int, *, size_um: float, r_um: float, gap_um: float, seed: int):
    """``n`` centres at least ``2 * r * aspect + gap`` apart (dart throwing) inside the tile."""
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n:
        p = rng.uniform(r_um * 1.5, size_um - r_um * 1.5, 2)
        if all(np.hypot(*(p - q)) > 2 * r_um * 1.3 + gap_um for q in pts):
            pts.append(p)
    return np.array(pts)


def test_hematoxylin_is_skimage_rgb2hed():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    want = np.maximum(rgb2hed(rgb)[..., 0], 0)
    np.testing.assert_allclose(N.hematoxylin(rgb), want, atol=1e-5)


@pytest.mark.parametrize("n, seed", [(20, 1), (45, 2), (70, 3)])
def test_counts_on_tiles_with_a_known_number_of_nuclei(n, seed):
    centres = scattered(n, size_um=128.0, r_um=3.0, gap_um=1.0, seed=seed)
    radii = np.random.default_rng(seed).uniform(2.5, 3.5, n)
    rgb = render(centres, radii, size_um=128.0, mpp=0.5, seed=seed)
    found = N.nuclei_of_tile(rgb, mpp=0.5)[0]
    assert abs(len(found) - n) <= 0.05 * n
    # every planted nucleus is found once: nearest detected centroid within a radius
    yx = found[:, :2] * 0.5
    d = np.hypot(*(centres[:, None, :] - yx[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    assert (d < 2.5).mean() >= 0.95


def test_touching_nuclei_are_split_by_the_watershed():
    pairs = scattered(15, size_um=128.0, r_um=6.5, gap_um=2.0, seed=4)
    centres = np.concatenate([pairs - [0, 3.2], pairs + [0, 3.2]])  # 15 pairs of touching 3.2-um discs
    rgb = render(centres, np.full(30, 3.2), size_um=128.0, mpp=0.5, seed=4, aspect=1.0)
    nuc = N.nuclei_of_tile(rgb, mpp=0.5)[0]
    assert abs(N.clump_counts(nuc).sum() - 30) <= 0.05 * 30 + 1


def test_a_tile_without_nuclei_has_none():
    rgb = render(np.zeros((0, 2)), [], size_um=128.0, mpp=0.5)
    nuc, tissue = N.nuclei_of_tile(rgb, mpp=0.5)
    assert len(nuc) == 0 and tissue > 0.99
    glass = np.full((128, 128, 3), 242, np.uint8)
    assert N.nuclei_of_tile(glass, mpp=0.5)[1] == 0.0


def test_areas_in_um2_scale_with_mpp():
    centres = scattered(30, size_um=128.0, r_um=3.0, gap_um=2.0, seed=5)
    radii = np.full(30, 3.0)
    areas = {}
    for mpp in (0.25, 0.5):
        nuc = N.nuclei_of_tile(render(centres, radii, size_um=128.0, mpp=mpp, seed=5), mpp=mpp)[0]
        areas[mpp] = np.median(nuc[:, 2 + N.MORPH.index("area_um2")])
        major = np.median(nuc[:, 2 + N.MORPH.index("major_axis_um")])
        assert major == pytest.approx(2 * 3.0 * 1.3, rel=0.12)
    assert areas[0.25] == pytest.approx(np.pi * 9.0, rel=0.12)  # pi r^2 (the ellipse keeps the area)
    assert areas[0.5] == pytest.approx(areas[0.25], rel=0.12)


def test_nucleus_graph_of_a_triangular_lattice():
    s = 10.0
    pts = np.array([(r * s * np.sqrt(3) / 2, c * s + (r % 2) * s / 2) for r in range(12) for c in range(12)])
    edges, length = nucleus_graph(pts, max_edge_um=15.0)
    np.testing.assert_allclose(length, s, rtol=1e-6)  # only nearest neighbours are Delaunay edges here
    deg = np.bincount(edges.ravel(), minlength=len(pts))
    assert deg.max() == 6 and np.median(deg) == 6
    stats = dict(zip(("deg_mean", "deg_sd", "e_mean", "e_sd", "e_q50", "clustering"),
                     graph_stats(len(pts), edges, length)))
    assert stats["e_q50"] == pytest.approx(s) and 0.4 <= stats["clustering"] <= 0.6  # interior nodes: 6/15
    far, _ = nucleus_graph(pts * 3.0, max_edge_um=15.0)  # spacing 30 um > max edge: no neighbours
    assert len(far) == 0


def test_tile_features_counts_and_density():
    nuc = np.zeros((10, 2 + len(N.MORPH)))
    nuc[:, :2] = np.random.default_rng(0).uniform(0, 200, (10, 2))
    nuc[:, 2] = np.arange(10) + 20.0
    f = dict(zip(TILE_FEATURES, tile_features(nuc, mpp=0.5, tissue_mm2=0.01, counts=np.full(10, 2.0))))
    assert f["n_nuclei"] == 10 and f["n_nuclei_est"] == 20 and f["density_per_mm2"] == pytest.approx(2000)
    assert f["area_um2_mean"] == pytest.approx(24.5) and f["area_um2_q50"] == pytest.approx(24.5)
    empty = dict(zip(TILE_FEATURES, tile_features(np.zeros((0, 11)), mpp=0.5, tissue_mm2=0.01)))
    assert empty["n_nuclei"] == 0 and empty["density_per_mm2"] == 0 and np.isnan(empty["area_um2_mean"])


def _tiles(slide, patient, xs, dens, n_est, tissue):
    rows = []
    for x, d, n, t in zip(xs, dens, n_est, tissue):
        r = {f: np.nan for f in TILE_FEATURES}
        r.update(slide_id=slide, patient_id=patient, event_time="2020-01-01", x=x, y=0, density_per_mm2=d,
                 n_nuclei_est=n, n_nuclei=n, tissue_mm2=t)
        rows.append(r)
    return rows


def test_slide_and_patient_aggregates_with_extremum_coordinates():
    tiles = pd.DataFrame(_tiles("s1", "p", [0, 256, 512], [100.0, 300.0, np.nan], [1, 3, 0], [0.01, 0.01, 0.0])
                         + _tiles("s2", "p", [0, 256], [500.0, 50.0], [5, 1], [0.01, 0.02]))
    slides = slide_table(tiles).set_index("slide_id")
    assert slides.loc["s1", "nuclei_per_mm2"] == pytest.approx(4 / 0.02)
    assert slides.loc["s1", "density_per_mm2_argmax_x"] == 256 and slides.loc["s1", "density_per_mm2_argmin_x"] == 0
    assert slides.loc["s1", "density_per_mm2_mean"] == pytest.approx(200.0)  # NaN tile skipped
    pat = patient_table(slides.reset_index()).iloc[0]
    assert pat["nuclei_per_mm2"] == pytest.approx(10 / 0.05) and pat["n_slides"] == 2
    assert pat["density_per_mm2_max"] == 500 and pat["density_per_mm2_argmax_slide"] == "s2"
    assert pat["density_per_mm2_min"] == 50 and pat["density_per_mm2_argmin_x"] == 256
    loc = located_features(pd.DataFrame([pat]), id_col="patient_id")
    hit = loc[loc["feature"] == "nuclei_density_per_mm2_max"].iloc[0]
    assert (hit["slide_id"], hit["x"], hit["y"]) == ("s2", 0, 0)


def test_tile_sample_is_seeded_sorted_and_bounded():
    a = sample_tiles("slide-a", 100, max_tiles=16, seed=0)
    assert len(a) == 16 and (np.diff(a) > 0).all()
    assert (a == sample_tiles("slide-a", 100, max_tiles=16, seed=0)).all()
    assert not (a == sample_tiles("slide-b", 100, max_tiles=16, seed=0)).all()
    assert (sample_tiles("slide-a", 10, max_tiles=16, seed=0) == np.arange(10)).all()
    assert len(sample_tiles("slide-a", 100, max_tiles=0, seed=0)) == 100
