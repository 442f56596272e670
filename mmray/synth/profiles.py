"""Size profiles for synthetic cohorts: ``tiny`` (tests), ``demo``, ``large``, ``xl`` (real-size slides).

``xl`` writes diagnostic-slide-sized pyramids (100,000 x 80,000 px at 0.25 um/px, 256-px JPEG tiles, five
levels: about 24 GB of pixels and 2-3 GB of file each) tile by tile (:mod:`mmray.synth.slide_writer`);
its other modalities are ``tiny``-sized, and its slides are written one at a time in the calling process
with rate/ETA lines (a slide takes minutes; Ray tasks would print nothing until they finish).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mmray.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class SynthProfile:
    name: str
    default_patients: int
    # Slides: level-0 size, resolution, TIFF tile size and pyramid depth.
    slide_width_px: int
    slide_height_px: int
    slide_mpp: float
    slide_levels: int
    slide_tile_px: int
    p_wsi: float  # fraction of patients with at least one slide
    p_two_slides: float  # of those, fraction with a second slide
    # CT: in-plane matrix, number of slices, voxel spacing.
    ct_matrix_px: int
    ct_slices: int
    ct_pixel_spacing_mm: float
    ct_slice_thickness_mm: float
    p_ct: float
    # Genomics.
    n_genes: int
    p_expression: float
    p_mutations: float
    p_cnv: float
    n_noise_signatures: int
    n_pathways: int
    # Whether writing fans out over Ray tasks.
    use_ray: bool = False
    # Fraction of slides with a QuPath GeoJSON tumour annotation (the tumour-tile filter learns from them).
    p_annotated: float = 0.2


PROFILES: dict[str, SynthProfile] = {
    "tiny": SynthProfile(
        name="tiny", default_patients=8,
        slide_width_px=2048, slide_height_px=1536, slide_mpp=0.5, slide_levels=3, slide_tile_px=256,
        p_wsi=0.85, p_two_slides=0.25,
        ct_matrix_px=64, ct_slices=24, ct_pixel_spacing_mm=3.0, ct_slice_thickness_mm=3.0, p_ct=0.85,
        n_genes=300, p_expression=0.9, p_mutations=0.9, p_cnv=0.85,
        n_noise_signatures=8, n_pathways=6,
    ),
    "demo": SynthProfile(
        name="demo", default_patients=150,
        slide_width_px=8192, slide_height_px=6144, slide_mpp=0.5, slide_levels=4, slide_tile_px=512,
        p_wsi=0.8, p_two_slides=0.15,
        ct_matrix_px=128, ct_slices=48, ct_pixel_spacing_mm=1.5, ct_slice_thickness_mm=2.5, p_ct=0.8,
        n_genes=1000, p_expression=0.9, p_mutations=0.85, p_cnv=0.85,
        n_noise_signatures=8, n_pathways=10,
        use_ray=True,
    ),
    "large": SynthProfile(
        name="large", default_patients=1000,
        slide_width_px=16384, slide_height_px=12288, slide_mpp=0.25, slide_levels=5, slide_tile_px=512,
        p_wsi=0.9, p_two_slides=0.2,
        ct_matrix_px=256, ct_slices=96, ct_pixel_spacing_mm=0.8, ct_slice_thickness_mm=1.25, p_ct=0.85,
        n_genes=5000, p_expression=0.95, p_mutations=0.9, p_cnv=0.9,
        n_noise_signatures=8, n_pathways=40,
        use_ray=True,
    ),
    "xl": SynthProfile(
        name="xl", default_patients=2,
        slide_width_px=100_000, slide_height_px=80_000, slide_mpp=0.25, slide_levels=5, slide_tile_px=256,
        p_wsi=1.0, p_two_slides=0.0,
        ct_matrix_px=64, ct_slices=24, ct_pixel_spacing_mm=3.0, ct_slice_thickness_mm=3.0, p_ct=0.85,
        n_genes=300, p_expression=0.9, p_mutations=0.9, p_cnv=0.85,
        n_noise_signatures=8, n_pathways=6,
    ),
}


def with_slide_px(profile: SynthProfile, slide_px: tuple[int, int] | None) -> SynthProfile:
    """``profile`` with level-0 slides of ``slide_px = (width, height)`` pixels (None: unchanged)."""
    if slide_px is None:
        return profile
    width, height = slide_px
    return dataclasses.replace(profile, slide_width_px=int(width), slide_height_px=int(height))


def parse_slide_px(text: str) -> tuple[int, int]:
    """``"W,H"`` (also ``WxH``; underscores allowed: ``100_000,80_000``) -> ``(W, H)``."""
    parts = text.lower().replace("x", ",").replace("_", "").split(",")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ConfigError([("slide_px", f"must be WIDTH,HEIGHT in pixels (e.g. 100000,80000), got {text!r}")],
                          source="--slide-px") from None
    return width, height


def get_profile(name: str) -> SynthProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownNameError("profile", name, list(PROFILES)) from None
