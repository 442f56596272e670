"""Radiomic features with pyradiomics, from in-memory arrays.

``params`` is a pyradiomics parameters mapping (the params-file format), by
default :data:`DEFAULT_PARAMS_PATH` (original image; first order, shape,
GLCM, GLRLM, GLSZM, GLDM, NGTDM: 107 features; binWidth 25; no resampling).
Features are named as pyradiomics names them (``original_firstorder_Mean``);
``diagnostics_*`` entries are dropped.  :func:`params_hash` identifies a
parameter set (plus whatever else changes the numbers) so reruns know which
stored rows are still valid.

Images reach pyradiomics as SimpleITK images built from ``(z, y, x)`` arrays
with the CT's spacing, origin (LPS, mm) and direction, exactly as a
SimpleITK series reader would give them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from mmray import uri as uri_mod
from mmray.errors import ConfigError, InputError

DEFAULT_PARAMS_PATH = Path(__file__).with_name("radiomics_default.yaml")


def pyradiomics_version() -> str:
    import radiomics

    return str(radiomics.__version__)


def load_params(source: str | None = None) -> dict:
    """The parameters mapping from a YAML/JSON file (local or ``s3://``); the default when ``None``.

    Validated by pyradiomics' own schema; problems raise :class:`ConfigError`.
    """
    where = "ct.radiomics_params"
    path = str(DEFAULT_PARAMS_PATH) if source is None else str(source)
    try:
        raw = uri_mod.read_bytes(path)
    except (FileNotFoundError, OSError) as e:
        raise ConfigError([(where, f"cannot read the pyradiomics params file {path}: {e}")]) from e
    try:
        params = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        raise ConfigError([(where, f"{path} is not valid YAML: {e}")]) from e
    if not isinstance(params, dict):
        raise ConfigError([(where, f"{path} must hold a mapping with imageType, featureClass and setting")])
    make_extractor(params, path=path)  # validate now, not in every worker
    return params


def params_hash(params: dict, *, extra: dict | None = None) -> str:
    """Short stable hash of ``params`` plus ``extra`` (other settings that change features)."""
    blob = json.dumps({"params": params, "extra": extra or {}}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_extractor(params: dict, *, path: str = "params"):
    from radiomics import featureextractor

    quiet_radiomics()
    try:
        return featureextractor.RadiomicsFeatureExtractor(json.loads(json.dumps(params)))
    except Exception as e:  # pykwalify SchemaError, ValueError
        raise ConfigError([("ct.radiomics_params", f"{path} is not a valid pyradiomics parameter set: {e}")]) from e


@lru_cache(maxsize=4)
def _cached_extractor(blob: str):
    return make_extractor(json.loads(blob))


def quiet_radiomics() -> None:
    """pyradiomics logs per-study INFO/WARNING chatter to stderr; keep errors only."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)  # its own stderr handler
    for name in ("radiomics", "pykwalify"):  # and what propagates to the application's handlers
        logging.getLogger(name).setLevel(logging.ERROR)


def sitk_image(array_zyx: np.ndarray, *, spacing_mm_zyx, origin_mm, direction: np.ndarray):
    """A SimpleITK image of a ``(z, y, x)`` array; ``direction``: (3, 3) unit columns (x, y, z axes)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing(tuple(float(s) for s in spacing_mm_zyx[::-1]))
    img.SetOrigin(tuple(float(v) for v in origin_mm))
    img.SetDirection(tuple(float(v) for v in np.asarray(direction, dtype=float).ravel()))
    return img


def compute_features(hu_zyx: np.ndarray, mask_zyx: np.ndarray, *, spacing_mm_zyx, origin_mm,
                     direction: np.ndarray, params: dict, threads: int | None = None) -> tuple[dict, float]:
    """Features of the mask's label on the image: ``({name: float}, pyradiomics seconds)``.

    ``threads`` caps SimpleITK's threads (1 inside a one-CPU Ray task, so
    tasks do not fight over cores); ``None`` leaves SimpleITK's default.
    """
    import SimpleITK as sitk

    if hu_zyx.shape != mask_zyx.shape:
        raise InputError(f"image {hu_zyx.shape} and mask {mask_zyx.shape} differ in shape", stage="radiomics")
    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    extractor = _cached_extractor(json.dumps(params, sort_keys=True))
    if crop_is_exact(params):
        hu_zyx, mask_zyx, origin_mm = crop_to_mask(hu_zyx, mask_zyx, spacing_mm_zyx=spacing_mm_zyx,
                                                   origin_mm=origin_mm, direction=direction,
                                                   margin=int(params.get("setting", {}).get("padDistance", 5)) + 1)
    geometry = {"spacing_mm_zyx": spacing_mm_zyx, "origin_mm": origin_mm, "direction": direction}
    image = sitk_image(hu_zyx.astype(np.float32, copy=False), **geometry)
    mask = sitk_image(mask_zyx.astype(np.uint8, copy=False), **geometry)
    start = time.perf_counter()
    try:
        result = extractor.execute(image, mask)
    except Exception as e:  # pyradiomics raises ValueError/RuntimeError for unusable ROIs
        raise InputError(f"pyradiomics failed on this study ({type(e).__name__}: {e})", stage="radiomics") from e
    seconds = time.perf_counter() - start
    return feature_values(result), seconds


def crop_is_exact(params: dict) -> bool:
    """Whether cropping to the mask's box first leaves every feature unchanged: true for the
    original image without resampling or whole-image normalisation (pyradiomics crops to the
    mask's box itself; filters and resampling look beyond it)."""
    settings = params.get("setting") or {}
    image_types = set((params.get("imageType") or {"Original": {}}).keys())
    return (image_types == {"Original"} and not settings.get("resampledPixelSpacing")
            and not settings.get("normalize"))


def crop_to_mask(hu_zyx: np.ndarray, mask_zyx: np.ndarray, *, spacing_mm_zyx, origin_mm, direction: np.ndarray,
                 margin: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image and mask cut to the mask's bounding box plus ``margin`` voxels; the origin moves with it.

    pyradiomics' own first step (a label-statistics pass over the whole image) then runs
    on a few thousand voxels instead of the whole CT.
    """
    nonzero = np.nonzero(mask_zyx.any(axis=(1, 2)))[0], np.nonzero(mask_zyx.any(axis=(0, 2)))[0], \
        np.nonzero(mask_zyx.any(axis=(0, 1)))[0]
    if any(len(idx) == 0 for idx in nonzero):
        return hu_zyx, mask_zyx, tuple(origin_mm)
    box = tuple(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, n))
                for idx, n in zip(nonzero, mask_zyx.shape))
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    shift = np.asarray(direction, dtype=float) @ (start_xyz * np.asarray(spacing_mm_zyx, dtype=float)[::-1])
    return hu_zyx[box], mask_zyx[box], tuple(float(v) for v in np.asarray(origin_mm, dtype=float) + shift)


def feature_values(result: dict) -> dict[str, float]:
    """pyradiomics' result without ``diagnostics_*``, values as floats (name order kept)."""
    out = {}
    for name, value in result.items():
        if name.startswith("diagnostics_"):
            continue
        try:
            out[name] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue  # non-scalar extras; never features
    return out
