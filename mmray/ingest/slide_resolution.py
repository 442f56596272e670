"""A slide's level-0 resolution (micrometres per pixel), and whether to believe it.

Where the value comes from, first match wins: the cohort manifest's ``mpp``
column for that slide, ``wsi.mpp_override`` for every slide, the file's
metadata (``openslide.mpp-x/-y``, which OpenSlide takes from vendor fields
such as ``aperio.MPP`` or, for generic TIFFs, from the TIFF resolution tags).

A wrong resolution is expensive: tiles are placed in micrometres, so a
300 x 250 px picture tagged with image software's 72-dpi default (352.8 um/px)
plans tens of thousands of upsampled tiles. So the file's value is refused
when it comes from a TIFF resolution tag that is a known software default
(72, 96 or 300 pixels per inch), when the tags have no unit, and when any
value lies outside a plausible range (:class:`~mmray.errors.InputError` with
the value and the fix; the slide fails, the rest go on).
"""

from __future__ import annotations

import math

import openslide

from mmray.errors import InputError

DEFAULT_MPP_RANGE = (0.05, 20.0)  # um/px: finer than optics resolve ... coarser than a 0.5x overview
DEFAULT_DPI = (72.0, 96.0, 300.0)  # what image software writes when it knows no physical size
UM_PER_UNIT = {"inch": 25400.0, "centimeter": 10000.0}

FIX = ("give the slide's level-0 resolution in the cohort manifest's mpp column (micrometres per pixel: about "
       "0.25 for a 40x scan, 0.5 for 20x), or wsi.mpp_override=<micrometres per pixel> for every slide")


def mpp_source(*, manifest_mpp: float | None, mpp_override: float | None) -> str:
    """Where :func:`slide_mpp` takes the value from, for messages."""
    if manifest_mpp is not None:
        return "the manifest's mpp column"
    if mpp_override is not None:
        return "wsi.mpp_override"
    return "openslide.mpp-x/-y"


def slide_mpp(slide: openslide.OpenSlide, *, name: str, mpp_override: float | None = None,
              manifest_mpp: float | None = None, mpp_range: tuple[float, float] = DEFAULT_MPP_RANGE) -> float:
    """Level-0 micrometres per pixel of ``slide`` (see the module docstring for the order and the checks).

    Raises :class:`InputError` (``item=name``) naming the value, where it came from, and the fix.
    """
    lo, hi = mpp_range
    given = manifest_mpp if manifest_mpp is not None else mpp_override
    if given is not None:
        where = mpp_source(manifest_mpp=manifest_mpp, mpp_override=mpp_override)
        if not (math.isfinite(given) and lo <= given <= hi):
            raise InputError(f"slide {name}: {where} gives {given:g} um/px, outside the plausible range "
                             f"{lo:g}-{hi:g} um/px (wsi.min_mpp, wsi.max_mpp); correct the value", item=name)
        return float(given)
    props = slide.properties
    values = [v for v in (_number(props.get(k)) for k in (openslide.PROPERTY_NAME_MPP_X,
                                                          openslide.PROPERTY_NAME_MPP_Y)) if v is not None and v > 0]
    if not values:
        raise InputError(f"slide {name} has no resolution metadata ({_tags(props)}), so a tile size in "
                         f"micrometres cannot be placed on it; {FIX}", item=name)
    mpp = sum(values) / len(values)
    default = _software_default(props, mpp)
    if default:
        raise InputError(f"slide {name}: its resolution is not a scanner's: openslide.mpp-x = {mpp:.4g} um/px "
                         f"comes from {default}, the default that image software writes when it knows no "
                         f"physical pixel size (72, 96 and 300 dpi are); {FIX}", item=name)
    if not lo <= mpp <= hi:
        raise InputError(f"slide {name}: openslide.mpp-x = {mpp:.4g} um/px ({_tags(props)}) is outside the "
                         f"plausible range {lo:g}-{hi:g} um/px (wsi.min_mpp, wsi.max_mpp); {FIX}", item=name)
    return mpp


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _software_default(props, mpp: float) -> str:
    """``"tiff.XResolution = 72 pixels per inch"`` when ``mpp`` is derived from a default-dpi tag, else ``""``.

    Only when OpenSlide's value is the one the TIFF tag gives: a vendor field (``aperio.MPP``) wins over
    the tags, and then whatever the tags say does not matter.
    """
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    for axis in ("X", "Y"):
        res = _number(props.get(f"tiff.{axis}Resolution"))
        if unit != "inch" or not res or not any(abs(res - d) < 1e-6 * d for d in DEFAULT_DPI):
            continue
        if abs(UM_PER_UNIT["inch"] / res - mpp) <= 1e-3 * mpp:
            return f"tiff.{axis}Resolution = {res:g} pixels per inch"
    return ""


def _tags(props) -> str:
    """What the file says about its resolution, for messages."""
    keys = [k for k in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y, "tiff.XResolution",
                        "tiff.YResolution") if k in props]
    if "tiff.XResolution" in props and "tiff.ResolutionUnit" in props:
        keys.append("tiff.ResolutionUnit")  # libtiff reports 'inch' by default when the file has no tags
    if not keys:
        return "no openslide.mpp-x/-y, no TIFF resolution tags"
    said = ", ".join(f"{k} = {props[k]}" for k in keys)
    if str(props.get("tiff.ResolutionUnit", "")).lower() == "none" and "tiff.XResolution" in props:
        said += ": a resolution without a unit is no physical size"
    return said
