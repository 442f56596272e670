"""Slides for the WSI tests: tiny synthetic slides, plus broken variants."""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import numpy as np
import tifffile

from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slides import write_slides

TINY = get_profile("tiny")


def tiny_slides(out: Path, n: int = 2, *, seed: int = 6) -> list[dict]:
    """``n`` tiny-profile slides (2048 x 1536 at 0.5 mpp); records with an absolute ``path``."""
    patients = [dataclasses.replace(p, n_slides=1, corruptions=[]) for p in sample_patients(n, profile=TINY, seed=seed)]
    records = write_slides(patients, out_dir=out / "slides", profile=TINY, seed=seed)
    return [{**r, "path": str(out / r["path"])} for r in records]


def break_tile(src: str | Path, dst: str | Path, *, x: int = 1024, y: int = 768) -> Path:
    """Copy a slide and destroy the level-0 JPEG tile holding level-0 pixel ``(x, y)``.

    OpenSlide opens the copy and reads every other tile; reading that one fails.
    """
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        index = (y // page.tilelength) * per_row + x // page.tilewidth
        offset = page.dataoffsets[index]
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * 16)
    return Path(dst)


def generic_tiff(path: str | Path, *, dpi: float | None = 72.0, width_px: int = 300, height_px: int = 250) -> Path:
    """A one-level tiled RGB TIFF (OpenSlide's generic-tiff) with a stained blob on glass, as tifffile writes it.

    ``dpi``: resolution tags of ``dpi`` pixels per inch, the default of image software (OpenSlide reports
    ``openslide.mpp-x = 25400 / dpi``, 352.8 for 72); ``None``: tifffile's default tags (XResolution 1,
    ResolutionUnit none), so OpenSlide has no mpp.
    """
    img = np.full((height_px, width_px, 3), 235, np.uint8)
    img[height_px // 5: height_px * 4 // 5, width_px // 5: width_px * 4 // 5] = (170, 70, 150)  # eosin/haematoxylin
    res = {} if dpi is None else {"resolution": (dpi, dpi), "resolutionunit": "INCH"}
    tifffile.imwrite(path, img, photometric="rgb", tile=(128, 128), compression="jpeg", metadata=None, **res)
    return Path(path)


def strip_resolution_tags(path: str | Path) -> Path:
    """Remove XResolution, YResolution and ResolutionUnit from every IFD of a classic TIFF, in place.

    tifffile always writes these tags; a file from other software may have none. The IFD is rewritten
    shorter at its own offset (tag values stored elsewhere in the file stay where they are).
    """
    drop = {282, 283, 296}
    with tifffile.TiffFile(path) as tif:
        if tif.is_bigtiff:
            raise ValueError(f"{path} is a BigTIFF; strip_resolution_tags handles classic TIFF only")
        order = tif.byteorder
        offsets = [page.offset for page in tif.pages]
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            (count,) = struct.unpack(order + "H", f.read(2))
            entries = [f.read(12) for _ in range(count)]
            next_ifd = f.read(4)
            keep = [e for e in entries if struct.unpack(order + "H", e[:2])[0] not in drop]
            f.seek(offset)
            f.write(struct.pack(order + "H", len(keep)) + b"".join(keep) + next_ifd)
    return Path(path)
