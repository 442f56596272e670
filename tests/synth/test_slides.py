"""Synthetic slides: OpenSlide reads them, the planted signal is in the pixels, bytes are deterministic."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import openslide
import pytest
from scipy import ndimage

from mmray.errors import ConfigError, UnknownNameError
from mmray.synth.latent import SUBTYPES, sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slides import BACKGROUND_RGB, TRUNCATE_FRACTION, planted_density_per_mm2, slide_id, write_slides

TINY = get_profile("tiny")
Z_LOW, Z_HIGH = -1.5, 1.5


def controlled_patient(index: int, *, subtype: str, z_wsi: float, n_slides: int = 1, corruptions=()):
    """A sampled patient with the slide-relevant truth set by hand."""
    base = sample_patients(1, profile=TINY, seed=0)[0]
    return dataclasses.replace(base, index=index, patient_id=f"TCGA-05-{3000 + index:04d}", subtype=subtype,
                               z_wsi=z_wsi, n_slides=n_slides, corruptions=list(corruptions))


def rgb(path: Path, level: int, *, location=(0, 0), size=None) -> np.ndarray:
    """(H, W, 3) int pixels of a region; ``location`` in level-0 pixels, ``size`` in level pixels."""
    with openslide.OpenSlide(path) as slide:
        size = size or slide.level_dimensions[level]
        return np.asarray(slide.read_region(location, level, size).convert("RGB")).astype(int)


def tissue_mask(pixels: np.ndarray) -> np.ndarray:
    return pixels.min(axis=2) < 225  # glass is ~(240, 240, 238)


def hematoxylin_mask(pixels: np.ndarray) -> np.ndarray:
    """Dark, bluish pixels: nuclei (stroma and glass are light and have R > B or R ~ B)."""
    return (pixels[..., 0] < 170) & (pixels[..., 2] > pixels[..., 0])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    patients = sample_patients(6, profile=TINY, seed=11)
    out = tmp_path_factory.mktemp("cohort") / "slides"
    return patients, out, write_slides(patients, out_dir=out, profile=TINY, seed=5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Slides of patients that differ only in subtype and z_wsi (two replicates each): {(subtype, z): [path]}."""
    grid = [(s, z, rep) for s in SUBTYPES for z in (Z_LOW, Z_HIGH) for rep in range(2)]
    patients = [controlled_patient(100 + i, subtype=s, z_wsi=z) for i, (s, z, _) in enumerate(grid)]
    out = tmp_path_factory.mktemp("planted") / "slides"
    records = write_slides(patients, out_dir=out, profile=TINY, seed=3)
    paths: dict[tuple[str, float], list[Path]] = {}
    for (s, z, _), rec in zip(grid, records):
        paths.setdefault((s, z), []).append(out.parent / rec["path"])
    return paths


def test_one_record_per_slide_with_its_facts(cohort):
    patients, out, records = cohort
    expected = [(p, k) for p in patients for k in range(1, p.n_slides + 1)]
    assert len(records) == len(expected) and any(p.n_slides == 2 for p in patients)
    for (p, k), rec in zip(expected, records):
        assert rec["patient_id"] == p.patient_id
        assert rec["slide_id"] == slide_id(p.patient_id, k) == f"{p.patient_id}-01Z-00-DX{k}"
        assert rec["path"] == f"slides/{rec['slide_id']}.tiff" and (out.parent / rec["path"]).is_file()
        assert (rec["width_px"], rec["height_px"], rec["mpp"], rec["levels"]) == (2048, 1536, 0.5, 3)
        assert rec["acquisition_date"] == p.biopsy_date.isoformat()
        assert rec["nuclear_density_per_mm2"] == pytest.approx(planted_density_per_mm2(p), abs=0.1)
        assert 0.25 <= rec["tissue_fraction"] <= 0.5
        assert rec["corrupt"] is None
    assert sorted(f.name for f in out.iterdir()) == sorted(Path(r["path"]).name for r in records)  # no .partial


def test_openslide_reads_a_generic_tiff_pyramid_with_mpp_and_date(cohort):
    patients, out, records = cohort
    by_id = {p.patient_id: p for p in patients}
    for rec in records:
        with openslide.OpenSlide(out.parent / rec["path"]) as slide:
            props = slide.properties
            assert props[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
            assert slide.level_count == TINY.slide_levels >= 3
            assert slide.level_dimensions == ((2048, 1536), (512, 384), (128, 96))
            assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
            assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(TINY.slide_mpp)
            assert float(props[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(TINY.slide_mpp)
            assert props["openslide.level[0].tile-width"] == str(TINY.slide_tile_px)
            assert props["tiff.DateTime"] == by_id[rec["patient_id"]].biopsy_date.strftime("%Y:%m:%d 00:00:00")
            assert "|MPP = 0.5|" in props["tiff.ImageDescription"]


def test_corners_are_glass_and_the_centre_is_stained_tissue(cohort):
    _, out, records = cohort
    for rec in records:
        path = out.parent / rec["path"]
        corner = rgb(path, 0, location=(0, 0), size=(64, 64)).reshape(-1, 3)
        np.testing.assert_allclose(corner.mean(axis=0), BACKGROUND_RGB, atol=1.5)
        assert corner.std(axis=0).max() < 3  # slight noise, no structure
        centre = rgb(path, 0, location=(1024 - 128, 768 - 128), size=(256, 256)).reshape(-1, 3).mean(axis=0)
        assert centre[1] < 200 and centre[0] - centre[1] > 15, f"centre of {rec['slide_id']} is not H&E: {centre}"


def test_lower_levels_are_box_downsamples_of_level_0(cohort):
    _, out, records = cohort
    path = out.parent / records[0]["path"]
    level0 = rgb(path, 0)
    for level, factor in ((1, 4), (2, 16)):
        expected = level0.reshape(1536 // factor, factor, 2048 // factor, factor, 3).mean(axis=(1, 3))
        assert np.abs(rgb(path, level) - expected).mean() < 3  # JPEG rounding only


def test_subtype_sets_the_hue_of_tissue(planted):
    def mean_tissue_rgb(subtype: str) -> np.ndarray:
        pixels = [rgb(p, 1) for z in (Z_LOW, Z_HIGH) for p in planted[(subtype, z)]]
        return np.mean([px[tissue_mask(px)].mean(axis=0) for px in pixels], axis=0)

    adeno, squamous, large = (mean_tissue_rgb(s) for s in ("adenocarcinoma", "squamous_cell", "large_cell"))
    red_minus_green = {name: c[0] - c[1] for name, c in (("adeno", adeno), ("squamous", squamous), ("large", large))}
    assert red_minus_green["squamous"] > red_minus_green["adeno"] + 15  # eosinophilic sheets: pinker
    assert red_minus_green["adeno"] > red_minus_green["large"] + 5
    assert large[2] - large[0] > adeno[2] - adeno[0] + 10  # pale, bluish large-cell tissue


def test_nuclear_density_grows_with_z_wsi(planted):
    for subtype in SUBTYPES:
        for low, high in zip(planted[(subtype, Z_LOW)], planted[(subtype, Z_HIGH)]):
            fractions = []
            for path in (low, high):
                pixels = rgb(path, 0)
                fractions.append(hematoxylin_mask(pixels).sum() / tissue_mask(pixels).sum())
            assert fractions[1] > 1.8 * fractions[0] > 0.02, (subtype, fractions)


def test_sparse_nuclei_counted_on_pixels_match_the_planted_density(planted):
    # Large-cell nuclei at low z_wsi rarely touch, so connected dark blobs count them.
    patient = controlled_patient(100, subtype="large_cell", z_wsi=Z_LOW)
    for path in planted[("large_cell", Z_LOW)]:
        pixels = rgb(path, 0)
        _, n_blobs = ndimage.label(ndimage.binary_opening(hematoxylin_mask(pixels)))
        tissue_mm2 = tissue_mask(pixels).sum() * (TINY.slide_mpp / 1000) ** 2
        assert n_blobs / tissue_mm2 == pytest.approx(planted_density_per_mm2(patient), rel=0.25)


@pytest.mark.slow  # writes four sets of slides
def test_same_seed_same_bytes_and_slides_depend_only_on_their_patient(tmp_path):
    patients = [controlled_patient(7, subtype="adenocarcinoma", z_wsi=0.3, n_slides=2),
                controlled_patient(8, subtype="squamous_cell", z_wsi=-0.4)]
    first = write_slides(patients, out_dir=tmp_path / "a" / "slides", profile=TINY, seed=1)
    write_slides(patients, out_dir=tmp_path / "b" / "slides", profile=TINY, seed=1)
    write_slides(patients[1:], out_dir=tmp_path / "c" / "slides", profile=TINY, seed=1)
    write_slides(patients, out_dir=tmp_path / "d" / "slides", profile=TINY, seed=2)
    for rec in first:
        assert sha256(tmp_path / "a" / rec["path"]) == sha256(tmp_path / "b" / rec["path"])
        assert sha256(tmp_path / "a" / rec["path"]) != sha256(tmp_path / "d" / rec["path"])
    assert first[0]["slide_id"].endswith("DX1") and first[1]["slide_id"].endswith("DX2")
    assert sha256(tmp_path / "a" / first[0]["path"]) != sha256(tmp_path / "a" / first[1]["path"])
    assert sha256(tmp_path / "a" / first[2]["path"]) == sha256(tmp_path / "c" / first[2]["path"])


@pytest.mark.slow  # writes and reads whole slides
def test_truncated_slide_is_cut_and_unreadable_while_the_second_slide_is_fine(tmp_path):
    broken = controlled_patient(21, subtype="large_cell", z_wsi=0.0, n_slides=2, corruptions=["truncated_slide"])
    records = write_slides([broken], out_dir=tmp_path / "bad" / "slides", profile=TINY, seed=4)
    intact = write_slides([dataclasses.replace(broken, corruptions=[])], out_dir=tmp_path / "good" / "slides",
                          profile=TINY, seed=4)
    assert [r["corrupt"] for r in records] == ["truncated_slide", None]
    assert [r["corrupt"] for r in intact] == [None, None]
    full_bytes = (tmp_path / "good" / intact[0]["path"]).read_bytes()
    cut_bytes = (tmp_path / "bad" / records[0]["path"]).read_bytes()
    assert len(cut_bytes) == int(len(full_bytes) * TRUNCATE_FRACTION) and full_bytes.startswith(cut_bytes)

    with pytest.raises(openslide.OpenSlideError):
        with openslide.OpenSlide(tmp_path / "bad" / records[0]["path"]) as slide:
            for level in range(slide.level_count):  # open may succeed in other versions; tiles then fail
                slide.read_region((0, 0), level, slide.level_dimensions[level])
    assert sha256(tmp_path / "bad" / records[1]["path"]) == sha256(tmp_path / "good" / intact[1]["path"])
    assert rgb(tmp_path / "bad" / records[1]["path"], 2).shape == (96, 128, 3)


def test_bad_profile_and_unknown_subtype_are_reported(tmp_path):
    bad = dataclasses.replace(TINY, slide_tile_px=100, slide_levels=0)
    with pytest.raises(ConfigError) as err:
        write_slides([controlled_patient(1, subtype="large_cell", z_wsi=0.0)], out_dir=tmp_path, profile=bad, seed=0)
    assert {path for path, _ in err.value.problems} == {"slide_tile_px", "slide_levels"}
    with pytest.raises(UnknownNameError, match="adenocarcinoma"):
        write_slides([controlled_patient(1, subtype="mesothelioma", z_wsi=0.0)], out_dir=tmp_path, profile=TINY,
                     seed=0)


@pytest.mark.integration
def test_ray_fan_out_writes_the_same_bytes(tmp_path):
    import ray  # here, not at the top: only this test needs it

    patients = [controlled_patient(31, subtype="squamous_cell", z_wsi=1.0),
                controlled_patient(32, subtype="adenocarcinoma", z_wsi=-1.0)]
    local = write_slides(patients, out_dir=tmp_path / "local" / "slides", profile=TINY, seed=9)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = write_slides(patients, out_dir=tmp_path / "ray" / "slides",
                              profile=dataclasses.replace(TINY, use_ray=True), seed=9)
    finally:
        ray.shutdown()
    assert remote == local
    for rec in local:
        assert sha256(tmp_path / "local" / rec["path"]) == sha256(tmp_path / "ray" / rec["path"])
