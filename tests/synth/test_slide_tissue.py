"""Synthetic tissue: tumour vs non-tumour regions, site stains, annotations and the truth mask in truth.json."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from mmray.features.tile_filter import annotated_fraction, read_annotation
from mmray.synth import slide_tissue as T
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slide_morphology import plan_slide, planted_density_per_mm2
from mmray.synth.slides import annotated_slides, write_slides

TINY = get_profile("tiny")


def patient(subtype: str, *, site: str = "05", z: float = 0.0, index: int = 5):
    base = sample_patients(1, profile=TINY, seed=0)[0]
    return dataclasses.replace(base, subtype=subtype, site=site, z_wsi=z, index=index, n_slides=1)


def cell_of(plan, blobs) -> tuple[np.ndarray, np.ndarray]:
    g = plan.grid_px
    return (np.clip((blobs.y // g).astype(int), 0, plan.fields.shape[1] - 1),
            np.clip((blobs.x // g).astype(int), 0, plan.fields.shape[2] - 1))


@pytest.mark.parametrize("subtype", ["adenocarcinoma", "squamous_cell", "large_cell"])
def test_tumour_nuclei_lie_in_the_tumour_at_the_planted_density_and_normal_ones_outside(subtype):
    p = patient(subtype, z=1.0)
    plan = plan_slide(p, profile=TINY, rng=np.random.default_rng([3, 2, 5, 1]))
    lo, hi = T.TUMOUR_FRACTION_RANGE
    assert lo - 0.05 <= plan.tumour_fraction <= hi + 0.05
    reach = int(np.ceil(40.0 / (plan.grid_px * plan.mpp)))  # a gland (lumen + rim) reaches ~40 um from its centre
    tumour = ndimage.binary_dilation(plan.tumour_mask, iterations=reach)
    normal = ndimage.binary_dilation((plan.fields[0] > plan.tissue_thr) & ~plan.tumour_mask, iterations=reach)
    r, c = cell_of(plan, plan.nuclei)
    assert tumour[r, c].mean() > 0.99
    r, c = cell_of(plan, plan.normal_nuclei)
    assert normal[r, c].mean() > 0.99
    tumour_mm2 = plan.tissue_mm2 * plan.tumour_fraction
    assert len(plan.nuclei.y) / tumour_mm2 == pytest.approx(planted_density_per_mm2(p), rel=0.1)
    normal_mm2 = plan.tissue_mm2 - tumour_mm2
    assert len(plan.normal_nuclei.y) / normal_mm2 == pytest.approx(T.NORMAL_DENSITY_PER_MM2, rel=0.25)


def test_non_tumour_tissue_does_not_depend_on_risk():
    plans = [plan_slide(patient("adenocarcinoma", z=z), profile=TINY, rng=np.random.default_rng([3, 2, 5, 1]))
             for z in (-2.0, 2.0)]
    dens = [len(p.normal_nuclei.y) / (p.tissue_mm2 * (1 - p.tumour_fraction)) for p in plans]
    assert dens[0] == pytest.approx(dens[1], rel=0.15)
    sizes = [np.median(np.maximum(p.normal_nuclei.rx, p.normal_nuclei.ry)) for p in plans]
    assert sizes[0] == pytest.approx(sizes[1], rel=0.05)
    tumour = [len(p.nuclei.y) / (p.tissue_mm2 * p.tumour_fraction) for p in plans]
    assert tumour[1] > 3 * tumour[0]


def test_sites_stain_differently_and_the_same_site_alike():
    stains = {s: T.site_stain(s) for s in ("05", "38", "44", "55", "XY")}
    vecs = {s: np.r_[st.h_od, st.e_od, st.gain] for s, st in stains.items()}
    for a in vecs:
        for b in vecs:
            if a < b:
                assert np.abs(vecs[a] - vecs[b]).max() > 0.05, (a, b)
    assert T.site_stain("XY") == T.site_stain("XY")
    # the stain lookup table differs by site only through the stain: same plan draws, other colours
    p38, p44 = (plan_slide(patient("large_cell", site=s), profile=TINY, rng=np.random.default_rng(0)) for s in
                ("38", "44"))
    assert np.array_equal(p38.nuclei.x, p44.nuclei.x) and not np.array_equal(p38.lut, p44.lut)


def test_annotations_on_a_fraction_of_intact_slides_outline_the_truth_mask(tmp_path):
    patients = [dataclasses.replace(p, n_slides=1) for p in sample_patients(5, profile=TINY, seed=2)]
    patients[1] = dataclasses.replace(patients[1], corruptions=["truncated_slide"])
    keys = [(p, 1) for p in patients]
    assert len(annotated_slides(keys, p_annotated=0.4, seed=1)) == 2
    assert 1 not in annotated_slides(keys, p_annotated=1.0, seed=1)  # a truncated slide is never annotated
    assert annotated_slides(keys, p_annotated=0.0, seed=1) == set()
    prof = dataclasses.replace(TINY, p_annotated=1.0)
    (rec,) = write_slides(patients[:1], out_dir=tmp_path / "slides", profile=prof, seed=4)
    assert rec["site"] == patients[0].site and rec["stain"] == T.site_stain(patients[0].site).as_dict()
    assert rec["annotation"].startswith("annotations/")
    doc = json.loads((tmp_path / rec["annotation"]).read_text())
    assert doc["type"] == "FeatureCollection"
    assert {f["properties"]["classification"]["name"] for f in doc["features"]} == {"Tumor"}
    mask, grid = T.truth_mask(rec["tumour_mask"])
    assert mask.shape == (-(-rec["height_px"] // grid), -(-rec["width_px"] // grid))
    rr, cc = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    frac = annotated_fraction(read_annotation(json.dumps(doc)), x=cc.ravel() * grid, y=rr.ravel() * grid,
                              size=np.full(cc.size, grid)).reshape(mask.shape)
    assert ((frac >= 0.5) == mask).mean() > 0.97
    tissue_density = rec["tumour_fraction"] * rec["nuclear_density_per_mm2"] + \
        (1 - rec["tumour_fraction"]) * T.NORMAL_DENSITY_PER_MM2
    assert rec["nuclear_density_tissue_per_mm2"] == pytest.approx(tissue_density, abs=0.2)
