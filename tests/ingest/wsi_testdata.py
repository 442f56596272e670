"""Slides for the WSI tests: tiny synthetic slides, plus broken variants."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

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
