"""Tumour-tile filter: GeoJSON annotations, tile fractions inside outlines, Elkan-Noto PU learning, fold safety."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmray.errors import InputError
from mmray.features import tile_filter as tf
from mmray.synth.slide_tissue import decode_mask, encode_mask, tumour_geojson

SQUARE_WITH_HOLE = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]],
            [[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[600, 0], [800, 0], [800, 200], [600, 200], [600, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"classification": {"name": "Tumor"}}},
    ],
}


def test_qupath_geojson_tumour_polygons_and_their_tile_fractions():
    polys = tf.read_annotation(json.dumps(SQUARE_WITH_HOLE), name="a.geojson")
    assert len(polys) == 1 and len(polys[0]) == 2  # stroma and the point are not tumour; outer ring + hole
    x = np.array([0, 100, 200, 300, 600, 0])
    y = np.array([0, 100, 100, 300, 0, 400])
    frac = tf.annotated_fraction(polys, x=x, y=y, size=np.full(6, 100))
    np.testing.assert_allclose(frac, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0], atol=0.02)  # (100..300)^2 is the hole
    # a tile straddling the outer edge: half inside
    half = tf.annotated_fraction(polys, x=np.array([350]), y=np.array([0]), size=np.array([100]))
    assert half[0] == pytest.approx(0.5, abs=0.07)
    every = tf.read_annotation(json.dumps(SQUARE_WITH_HOLE), classes=())
    assert len(every) == 2


def test_bad_annotations_are_input_errors_naming_the_file():
    with pytest.raises(InputError, match="SRC-abc.*not JSON"):
        tf.read_annotation("<xml/>", name="SRC-abc")
    with pytest.raises(InputError, match="not a GeoJSON"):
        tf.read_annotation('{"hello": 1}', name="x.geojson")
    multi = {"type": "MultiPolygon", "coordinates": [[[[0, 0], [10, 0], [10, 10], [0, 0]]],
                                                     [[[20, 20], [30, 20], [30, 30], [20, 20]]]]}
    assert len(tf.read_annotation(json.dumps(multi), classes=())) == 2


def test_synth_annotations_outline_the_truth_mask():
    """The GeoJSON synth writes, read back and rasterised, covers the tumour cells of the mask it came from."""
    rng = np.random.default_rng(0)
    from scipy import ndimage

    mask = ndimage.gaussian_filter(rng.standard_normal((48, 64)), 4) > 0.05
    mask[20:24, 30:34] = False  # a hole
    assert np.array_equal(decode_mask(encode_mask(mask), mask.shape), mask)
    grid = 32
    polys = tf.read_annotation(json.dumps(tumour_geojson(mask, grid_px=grid, min_cells=1)))
    rr, cc = np.mgrid[0:48, 0:64]
    frac = tf.annotated_fraction(polys, x=cc.ravel() * grid, y=rr.ravel() * grid, size=np.full(cc.size, grid))
    agree = (frac.reshape(mask.shape) >= 0.5) == mask
    assert agree.mean() > 0.97


def _pu_data(seed: int = 0, n_slides: int = 30, per_slide: int = 60, annotated_share: float = 0.2):
    """Tiles of slides with a tumour part: features shift with tumour; 20% of slides annotated (SCAR)."""
    rng = np.random.default_rng(seed)
    slides = np.repeat([f"s{i:02d}" for i in range(n_slides)], per_slide)
    patient_of = {s: f"p{int(s[1:]) // 2}" for s in set(slides)}  # two slides per patient
    y = rng.random(len(slides)) < 0.55
    emb = rng.standard_normal((len(slides), 12)) + 1.6 * y[:, None] * rng.standard_normal(12)[None]
    nuc = rng.standard_normal((len(slides), 4)) + 1.5 * y[:, None]
    nuc[rng.random(nuc.shape) < 0.2] = np.nan  # nuclei measured on a sample of tiles
    annotated_patients = sorted(set(patient_of.values()))[: int(round(annotated_share * n_slides / 2))]
    annotated = sorted(s for s, p in patient_of.items() if p in annotated_patients)
    labelled = y & np.isin(slides, annotated)
    return np.hstack([emb, nuc]), y, labelled, slides, patient_of, annotated


def test_pu_fit_never_sees_the_labels_of_the_slides_it_scores():
    X, y, labelled, slides, patient_of, annotated = _pu_data()
    seen: dict[int, np.ndarray] = {}
    fit = tf.fit_folds(X, labelled, slide=slides, patient_of=patient_of, annotated=annotated,
                       cfg=tf.TileFilterConfig(folds=3), n_embedding=12,
                       on_fit=lambda k, rows: seen.__setitem__(k, rows))
    assert fit.n_folds == 3 and set(seen) == {0, 1, 2}
    for slide, k in fit.fold_of_slide.items():
        rows = np.flatnonzero(slides == slide)
        assert not np.isin(rows, seen[k]).any(), f"fold {k} was fitted on tiles of {slide}, which it scores"
        # and the patient's other slide is in the same fold
        mates = [s for s, p in patient_of.items() if p == patient_of[slide] and s in fit.fold_of_slide]
        assert {fit.fold_of_slide[m] for m in mates} == {k}
    # an annotated slide's probabilities come from its own fold's model only
    s0 = annotated[0]
    rows = np.flatnonzero(slides == s0)
    k = fit.fold_of_slide[s0]
    np.testing.assert_allclose(fit.predict(X[rows], slide=slides[rows]), fit.models[k].predict_proba(X[rows])[:, 1])
    # an unannotated slide's: the mean of the fold models
    other = np.flatnonzero(~np.isin(slides, annotated))[:50]
    mean = np.mean([m.predict_proba(X[other])[:, 1] for m in fit.models], axis=0)
    np.testing.assert_allclose(fit.predict(X[other], slide=slides[other]), mean)


def test_elkan_noto_recovers_tumour_tiles_from_labels_on_a_fifth_of_the_slides():
    from sklearn.metrics import f1_score

    X, y, labelled, slides, patient_of, annotated = _pu_data(seed=1)
    fit = tf.fit_folds(X, labelled, slide=slides, patient_of=patient_of, annotated=annotated,
                       cfg=tf.TileFilterConfig(), n_embedding=12)
    prob = fit.predict(X, slide=slides)
    assert f1_score(y, prob >= 0.5) > 0.9
    # c estimates P(labelled | tumour): about the share of tumour tiles on annotated slides
    true_c = labelled[~np.isin(slides, [])].sum() / y.sum()
    assert np.mean(fit.c) == pytest.approx(true_c, rel=0.35)


def test_too_few_annotated_patients_is_a_clear_error():
    X, y, labelled, slides, patient_of, annotated = _pu_data()
    one = [s for s in annotated if patient_of[s] == patient_of[annotated[0]]]
    with pytest.raises(InputError, match="at least 2"):
        tf.fit_folds(X, labelled & np.isin(slides, one), slide=slides, patient_of=patient_of, annotated=one,
                     cfg=tf.TileFilterConfig(), n_embedding=12)
