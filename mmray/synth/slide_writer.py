"""Pyramidal tiled TIFFs written tile by tile, with memory bounded by the slide's width, never its area.

Level 0 comes from a generator of tiles in row-major order; every tile is JPEG-encoded as it arrives
and box-filtered 4x into a band of level 1 (``tile_px`` rows, the level's full width).  A full band is
encoded tile by tile into a spool file (one per level, next to the output) and box-filtered into the
band of the next level, and so on up the pyramid.  Once level 0 is written, each upper level's page is
copied from its spool.  So the writer holds one level-0 tile, one band per upper level (a 100,000-px
wide slide: 19 MB for level 1) and the spools' tile lengths, never a level; a 100,000 x 80,000 px slide
(24 GB of pixels) writes in about the memory of a 2,000 x 2,000 one.

The bytes are what ``tifffile.TiffWriter.write`` of the whole level would produce (its JPEG encoder,
its zero padding of edge tiles, edge replication when a level's size is not a multiple of 4), so slides
written here are byte-identical to slides written from whole arrays.  A level-0 tile given as ``None``
is background: its encoded bytes and its downsampled pixels are computed once per slide.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from mmray.memory import peak_rss_bytes, reset_peak_rss

COMPRESSION_JPEG = 7  # TIFF Compression tag value of "new-style" JPEG


@dataclass(frozen=True)
class PyramidSpec:
    """Geometry and metadata of one pyramidal TIFF (level ``k`` is ``downsample**k`` smaller)."""

    width_px: int
    height_px: int
    tile_px: int
    levels: int
    mpp: float  # level 0, micrometres per pixel
    jpeg_quality: int = 85
    downsample: int = 4
    description: str = ""
    software: str = "mmray"
    datetime: dt.datetime | None = None

    def level_shape(self, level: int) -> tuple[int, int]:
        """``(height, width)`` of ``level`` (each level is the ceiling of the one above over the downsample)."""
        h, w = self.height_px, self.width_px
        for _ in range(level):
            h, w = -(-h // self.downsample), -(-w // self.downsample)
        return h, w

    def tiles_across(self, level: int) -> tuple[int, int]:
        h, w = self.level_shape(level)
        return -(-h // self.tile_px), -(-w // self.tile_px)


@dataclass(frozen=True)
class WriteStats:
    """What one pyramid write did: tiles, background tiles, bytes, seconds and the process's peak RSS."""

    level0_tiles: int
    background_tiles: int
    file_bytes: int
    seconds: float
    peak_rss_bytes: int | None  # VmHWM of the writing process since the write began (None: not Linux)

    @property
    def tiles_per_s(self) -> float:
        return self.level0_tiles / max(self.seconds, 1e-9)


def downsample_box(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter an (H, W, 3) uint8 image by ``factor`` (rounded mean), padding edges to a multiple."""
    img = np.pad(img, ((0, -img.shape[0] % factor), (0, -img.shape[1] % factor), (0, 0)), mode="edge")
    rows = img[0::factor].astype(np.uint16)  # strided adds: ~10x faster than reshape().sum(axis=(1, 3))
    for i in range(1, factor):
        rows += img[i::factor]
    acc = rows[:, 0::factor].copy()
    for i in range(1, factor):
        acc += rows[:, i::factor]
    acc += factor * factor // 2
    acc //= factor * factor
    return acc.astype(np.uint8)


def _encoder(quality: int):
    """tifffile's own JPEG encoding of an RGB tile (YCbCr 2x2 subsampling, as its writer sets the tags)."""
    encode = tifffile.TIFF.COMPRESSORS[COMPRESSION_JPEG]
    kwargs = {"level": quality, "subsampling": (2, 2), "colorspace": "RGB", "outcolorspace": "YCBCR"}
    return lambda tile: encode(tile, **kwargs)


class _Spool:
    """Encoded tiles of one upper level, appended to a temporary file in row-major order."""

    def __init__(self, folder: Path, level: int):
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".level{level}-", suffix=".spool")
        self.path = Path(name)
        self.file = os.fdopen(fd, "w+b")
        self.lengths: list[int] = []

    def append(self, data: bytes) -> None:
        self.lengths.append(self.file.write(data))

    def replay(self) -> Iterator[bytes]:
        self.file.flush()
        self.file.seek(0)
        for n in self.lengths:
            yield self.file.read(n)

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class _Band:
    """The band of ``tile_px`` rows of one upper level that is being filled (zero beyond the level's width)."""

    def __init__(self, *, width_px: int, tile_px: int):
        self.width_px = width_px
        self.tiles = -(-width_px // tile_px)
        self.pixels = np.zeros((tile_px, self.tiles * tile_px, 3), np.uint8)
        self.rows = 0  # rows filled so far


class _Pyramid:
    """The state of one streaming write: bands and spools of levels 1..L-1."""

    def __init__(self, spec: PyramidSpec, folder: Path, encode):
        self.spec, self.encode, self.t = spec, encode, spec.tile_px
        self.bands = {k: _Band(width_px=spec.level_shape(k)[1], tile_px=spec.tile_px) for k in range(1, spec.levels)}
        self.spools = {k: _Spool(folder, k) for k in range(1, spec.levels)}
        self.filled = {k: 0 for k in range(1, spec.levels)}  # rows of level k emitted in bands so far

    def put_level1(self, small: np.ndarray, *, y0: int, x0: int) -> None:
        """Place a level-0 tile's downsample (``t / ds`` square) at level-0 ``(y0, x0)`` into level 1's band."""
        band, ds = self.bands[1], self.spec.downsample
        h1 = self.spec.level_shape(1)[0]
        row = y0 // ds - self.filled[1]
        x = x0 // ds
        rows = min(small.shape[0], h1 - y0 // ds)
        cols = min(small.shape[1], band.width_px - x)
        band.pixels[row:row + rows, x:x + cols] = small[:rows, :cols]
        band.rows = max(band.rows, row + rows)

    def band_full(self, level: int) -> bool:
        return self.bands[level].rows >= self.t

    def emit(self, level: int) -> None:
        """Encode level ``level``'s band into its spool and push its downsample into the next level's band."""
        band = self.bands[level]
        if band.rows == 0:
            return
        for c in range(band.tiles):
            self.spools[level].append(self.encode(band.pixels[:, c * self.t:(c + 1) * self.t]))
        nxt = level + 1
        if nxt < self.spec.levels:
            small = downsample_box(band.pixels[:band.rows, :band.width_px], self.spec.downsample)
            up = self.bands[nxt]
            row = self.filled[level] // self.spec.downsample - self.filled[nxt]
            up.pixels[row:row + small.shape[0], :small.shape[1]] = small
            up.rows = max(up.rows, row + small.shape[0])
        self.filled[level] += band.rows
        band.pixels[:] = 0
        band.rows = 0
        if nxt < self.spec.levels and self.band_full(nxt):
            self.emit(nxt)

    def finish(self) -> None:
        """Emit the partial bands at the bottom of every level, top-down."""
        for level in range(1, self.spec.levels):
            self.emit(level)

    def close(self) -> None:
        for spool in self.spools.values():
            spool.close()


def write_pyramid(path: str | os.PathLike, tiles: Iterable[np.ndarray | None], *, spec: PyramidSpec,
                  background: np.ndarray) -> WriteStats:
    """Write ``tiles`` (level 0, row-major, ``(tile_px, tile_px, 3)`` uint8 or ``None`` for ``background``)
    and the pyramid above them as a generic tiled TIFF at ``path`` (see the module docstring).

    Tiles at the right and bottom edges are whole tiles; the pixels past the slide's edge are written as
    given (level 0) and left out of the upper levels.  Resolution tags are in pixels per centimetre.
    """
    start = time.perf_counter()
    reset_peak_rss()
    path = Path(path)
    t, ds = spec.tile_px, spec.downsample
    if t <= 0 or t % 16 or t % ds:
        raise ValueError(f"tile_px must be a positive multiple of 16 (a TIFF rule) and of the downsample {ds}, "
                         f"got {t}")
    encode = _encoder(spec.jpeg_quality)
    pyramid = _Pyramid(spec, path.parent, encode)
    bg_bytes = encode(background)
    bg_small = downsample_box(background, ds)
    rows, cols = spec.tiles_across(0)
    counts = {"tiles": 0, "background": 0}
    it, end = iter(tiles), object()
    too_few = f"a {spec.width_px} x {spec.height_px} px level 0 in {t}-px tiles needs {rows * cols} tiles"

    def level0() -> Iterator[bytes]:
        for r in range(rows):
            for c in range(cols):
                pixels = next(it, end)
                if pixels is end:
                    raise ValueError(f"the tile generator stopped after {counts['tiles']} tiles; {too_few}")
                counts["tiles"] += 1
                if pixels is None:
                    counts["background"] += 1
                    data, small = bg_bytes, bg_small
                else:
                    data, small = encode(pixels), downsample_box(pixels, ds)
                if spec.levels > 1:
                    pyramid.put_level1(small, y0=r * t, x0=c * t)
                yield data
            if spec.levels > 1 and pyramid.band_full(1):
                pyramid.emit(1)

    common = dict(dtype=np.uint8, tile=(t, t), photometric="rgb", compression="jpeg", resolutionunit="CENTIMETER",
                  metadata=None)
    big = spec.width_px * spec.height_px * 3 > 2**31
    try:
        with tifffile.TiffWriter(path, bigtiff=big) as tif:
            tif.write(level0(), shape=(spec.height_px, spec.width_px, 3), resolution=(1e4 / spec.mpp, 1e4 / spec.mpp),
                      subfiletype=0, description=spec.description, software=spec.software, datetime=spec.datetime,
                      **common)
            if next(it, end) is not end:
                raise ValueError(f"the tile generator gave more tiles than the {too_few}")
            pyramid.finish()  # the bottom bands (tifffile may stop reading the generator at its last tile)
            for level in range(1, spec.levels):
                px_per_cm = 1e4 / (spec.mpp * ds**level)
                tif.write(pyramid.spools[level].replay(), shape=(*spec.level_shape(level), 3),
                          resolution=(px_per_cm, px_per_cm), subfiletype=1, **common)
    finally:
        pyramid.close()
    return WriteStats(level0_tiles=counts["tiles"], background_tiles=counts["background"],
                      file_bytes=path.stat().st_size, seconds=time.perf_counter() - start,
                      peak_rss_bytes=peak_rss_bytes())
