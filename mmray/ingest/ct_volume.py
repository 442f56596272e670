"""A CT series (single-frame files or enhanced multi-frame) to a 3D volume in HU.

Slices are ordered by their position along the slice normal (the cross
product of the two ImageOrientationPatient direction cosines, dotted with
ImagePositionPatient), never by InstanceNumber or file name.  Stored values
become Hounsfield units through each slice's RescaleSlope/RescaleIntercept.

Geometry (see :class:`Volume`): the array is ``(z, y, x)`` = (slice, row,
column), slice 0 lowest along the normal.  ``affine_lps`` maps voxel indices
``(i=column, j=row, k=slice, 1)`` to DICOM patient coordinates in mm (LPS:
+x left, +y posterior, +z head); NIfTI files get ``affine_ras`` (x and y
negated), which is what nibabel writes and what SimpleITK reads back as the
same LPS origin and direction.

Checks, each an :class:`~mmray.errors.InputError` naming the file: a slice
without pixel data or with the wrong number of pixel bytes, slices of
different sizes or orientations, two slices at one position, slices not
stacked along the normal (gantry tilt), missing slices (a gap over 1.5x the
median spacing) and uneven spacing beyond ``spacing_tolerance_mm``
(smaller unevenness is a warning listing the positions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mmray.errors import InputError
from mmray.ingest import dicom_raw as raw

MISSING_GAP_FACTOR = 1.5  # a gap this many median spacings wide means missing slice(s)
UNEVEN_NOTE_MM = 0.01  # spacing deviations below this are rounding, not worth a warning
ORIENTATION_TOL = 1e-3
MAX_LISTED = 5


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU; arrays are ``(z, y, x)``, index 0 = lowest along the normal."""

    hu: np.ndarray  # (nz, rows, cols) float32 or int16
    affine_lps: np.ndarray  # (4, 4): (i=col, j=row, k=slice, 1) -> LPS mm
    positions_mm: np.ndarray  # (nz, 3) ImagePositionPatient of each slice, sorted
    slice_ids: tuple[str, ...]  # SOPInstanceUID (multi-frame: "uid#frame") of each slice
    warnings: tuple[str, ...] = ()

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)

    @property
    def spacing_mm_zyx(self) -> tuple[float, float, float]:
        norms = np.linalg.norm(self.affine_lps[:3, :3], axis=0)  # (col, row, slice)
        return float(norms[2]), float(norms[1]), float(norms[0])

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """(x, y, z) LPS of voxel (0, 0, 0): ImagePositionPatient of the first slice."""
        return tuple(float(v) for v in self.affine_lps[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit columns: row direction (along x index), column direction, slice normal."""
        return self.affine_lps[:3, :3] / np.linalg.norm(self.affine_lps[:3, :3], axis=0)

    @property
    def normal(self) -> np.ndarray:
        return self.direction[:, 2]

    @property
    def affine_ras(self) -> np.ndarray:
        """The affine NIfTI uses (RAS+): LPS with x and y negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps


@dataclass(eq=False)
class _Slice:
    position: np.ndarray  # (3,) ImagePositionPatient
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    spacing_rc: tuple[float, float]  # PixelSpacing: between rows, between columns
    rows: int
    cols: int
    slope: float
    intercept: float
    label: str  # file name (+ frame) for messages
    uid: str
    load: Callable[[], np.ndarray]  # stored values, (rows, cols)


def _where(name: str, uid: str) -> str:
    return f"file {name} (SOPInstanceUID {uid})" if uid else f"file {name}"


def _floats(value: str, n: int, *, what: str, where: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value.split("\\")], dtype=float)
    except ValueError as e:
        raise InputError(f"{where}: {what} is not {n} numbers ({value!r})", stage="volume") from e
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InputError(f"{where}: {what} must hold {n} finite numbers, got {value!r}", stage="volume")
    return out


def _need(ds: Dataset, keyword: str, where: str) -> str:
    value = raw.text(ds, keyword)
    if value is None:
        raise InputError(f"{where}: {keyword} is missing; the slice cannot be placed in the volume",
                         stage="volume")
    return value


def _number(ds: Dataset, keyword: str, default: float, where: str) -> float:
    try:
        return raw.number(ds, keyword, default)
    except ValueError as e:
        raise InputError(f"{where}: {keyword} is not a number ({raw.text(ds, keyword)!r})", stage="volume") from e


def _check_pixel_bytes(ds: Dataset, *, frames: int, where: str) -> None:
    if "PixelData" not in ds:
        raise InputError(f"{where} has no pixel data (PixelData is missing); re-export the series "
                         f"or remove the file", stage="volume")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return  # the decoder checks compressed frames
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(_number(ds, "BitsAllocated", 16, where))
    expected = rows * cols * frames * bits // 8
    got = len(ds.PixelData)
    if got not in (expected, expected + 1):  # one pad byte keeps odd lengths even
        raise InputError(f"{where} has {got} bytes of pixel data, but Rows x Columns x frames x "
                         f"BitsAllocated/8 = {rows} x {cols} x {frames} x {bits}/8 = {expected}; the "
                         f"file is truncated or its header is wrong", stage="volume")


_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _native_pixels(ds: Dataset, *, frames: int) -> np.ndarray | None:
    """Uncompressed little-endian grey pixels straight from the bytes (pydicom's general decoder
    costs more than the rest of the read); ``None`` when any of that does not hold."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits = int(raw.number(ds, "BitsAllocated", 0))
    if (syntax not in _NATIVE_SYNTAXES or bits not in (8, 16, 32) or int(raw.number(ds, "BitsStored", 0)) != bits
            or int(raw.number(ds, "SamplesPerPixel", 1)) != 1):
        return None
    dtype = np.dtype(f"<{'i' if int(raw.number(ds, 'PixelRepresentation', 0)) else 'u'}{bits // 8}")
    shape = (frames, int(ds.Rows), int(ds.Columns)) if frames > 1 else (int(ds.Rows), int(ds.Columns))
    return np.frombuffer(ds.PixelData, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _decoded(ds: Dataset, *, frames: int, where: str) -> np.ndarray:
    _check_pixel_bytes(ds, frames=frames, where=where)
    fast = _native_pixels(ds, frames=frames)
    if fast is not None:
        return fast
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoder errors: missing codec, corrupt stream
        raise InputError(f"{where}: cannot decode the pixel data ({type(e).__name__}: {e}); "
                         f"install a decoder for its transfer syntax or re-export it uncompressed",
                         stage="volume") from e
    want = (frames, int(ds.Rows), int(ds.Columns)) if frames > 1 else (int(ds.Rows), int(ds.Columns))
    if arr.shape != want:
        raise InputError(f"{where}: pixel array has shape {arr.shape}, expected {want}", stage="volume")
    return arr


def slices_of(ds: Dataset, *, name: str) -> list[_Slice]:
    """The slices of one file: one for a single-frame CT, one per frame for enhanced CT."""
    uid = raw.text(ds, "SOPInstanceUID") or ""
    where = _where(name, uid)
    rows, cols = int(_number(ds, "Rows", 0, where)), int(_number(ds, "Columns", 0, where))
    if rows < 1 or cols < 1:
        raise InputError(f"{where}: Rows/Columns missing or zero; not an image", stage="volume")
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _frames_of(ds, rows=rows, cols=cols, name=name, uid=uid)
    spacing = _floats(_need(ds, "PixelSpacing", where), 2, what="PixelSpacing", where=where)
    return [_Slice(
        position=_floats(_need(ds, "ImagePositionPatient", where), 3, what="ImagePositionPatient", where=where),
        orientation=_floats(_need(ds, "ImageOrientationPatient", where), 6, what="ImageOrientationPatient",
                            where=where),
        spacing_rc=(float(spacing[0]), float(spacing[1])), rows=rows, cols=cols,
        slope=_number(ds, "RescaleSlope", 1.0, where), intercept=_number(ds, "RescaleIntercept", 0.0, where),
        label=name, uid=uid, load=lambda: _decoded(ds, frames=1, where=where))]


def _group_item(frame: Dataset, shared: Dataset, sequence: str) -> Dataset | None:
    for group in (frame, shared):
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _frames_of(ds: Dataset, *, rows: int, cols: int, name: str, uid: str) -> list[_Slice]:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    per_frame = ds.PerFrameFunctionalGroupsSequence
    n = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    if n != len(per_frame):
        raise InputError(f"{_where(name, uid)}: NumberOfFrames is {n} but there are {len(per_frame)} "
                         f"per-frame functional groups", stage="volume")
    cache: dict[str, np.ndarray] = {}

    def frame_loader(f: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if "all" not in cache:
                arr = _decoded(ds, frames=n, where=_where(name, uid))
                cache["all"] = arr if n > 1 else arr[None]
            return cache["all"][f]
        return load

    out = []
    for f, frame in enumerate(per_frame):
        where = f"{_where(name, uid)} frame {f + 1}"
        plane = _group_item(frame, shared, "PlanePositionSequence")
        orient = _group_item(frame, shared, "PlaneOrientationSequence")
        measures = _group_item(frame, shared, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise InputError(f"{where}: lacks PlanePositionSequence, PlaneOrientationSequence or "
                             f"PixelMeasuresSequence; the frame cannot be placed", stage="volume")
        spacing = _floats(_need(measures, "PixelSpacing", where), 2, what="PixelSpacing", where=where)
        rescale = _group_item(frame, shared, "PixelValueTransformationSequence") or ds
        out.append(_Slice(
            position=_floats(_need(plane, "ImagePositionPatient", where), 3, what="ImagePositionPatient",
                             where=where),
            orientation=_floats(_need(orient, "ImageOrientationPatient", where), 6,
                                what="ImageOrientationPatient", where=where),
            spacing_rc=(float(spacing[0]), float(spacing[1])), rows=rows, cols=cols,
            slope=_number(rescale, "RescaleSlope", 1.0, where),
            intercept=_number(rescale, "RescaleIntercept", 0.0, where),
            label=f"{name} frame {f + 1}", uid=f"{uid}#{f + 1}", load=frame_loader(f)))
    return out


def _fmt(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"


def order_slices(slices: list[_Slice], *, spacing_tolerance_mm: float) -> tuple[list[_Slice], float, list[str]]:
    """Sort along the normal and check the stack; returns (sorted slices, spacing mm, warnings)."""
    ref = slices[0]
    for s in slices[1:]:
        if (s.rows, s.cols) != (ref.rows, ref.cols):
            raise InputError(f"{s.label} (SOPInstanceUID {s.uid}) is {s.rows}x{s.cols} pixels but "
                             f"{ref.label} is {ref.rows}x{ref.cols}; one series must have one slice size",
                             stage="volume")
        if np.abs(s.orientation - ref.orientation).max() > ORIENTATION_TOL:
            raise InputError(f"{s.label} has ImageOrientationPatient {list(s.orientation)} but {ref.label} "
                             f"has {list(ref.orientation)}; mixed orientations in one series", stage="volume")
        if np.abs(np.subtract(s.spacing_rc, ref.spacing_rc)).max() > 1e-4:
            raise InputError(f"{s.label} has PixelSpacing {list(s.spacing_rc)} but {ref.label} has "
                             f"{list(ref.spacing_rc)}; mixed pixel spacings in one series", stage="volume")
    row_dir, col_dir = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    along = np.array([s.position @ normal for s in slices])
    if len(slices) == 1:
        return slices, 1.0, ["single-slice series: slice spacing set to 1 mm"]
    gaps = np.diff(along)
    dup = np.nonzero(gaps < 1e-3)[0]
    if len(dup):
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise InputError(f"{a.label} and {b.label} lie at the same position {_fmt(a.position)}; the series "
                         f"mixes acquisitions or holds duplicates; remove one", stage="volume")
    spacing = float(np.median(gaps))
    offsets = np.array([s.position - slices[0].position for s in slices])
    in_plane = offsets - np.outer(offsets @ normal, normal)
    tilt_tol = max(0.05, 0.05 * min(ref.spacing_rc))
    if np.abs(in_plane).max() > tilt_tol:
        k = int(np.abs(in_plane).max(axis=1).argmax())
        raise InputError(f"slices are not stacked along the slice normal (gantry tilt or sheared "
                         f"series): {slices[k].label} at {_fmt(slices[k].position)} is "
                         f"{np.linalg.norm(in_plane[k]):.2f} mm off the stack axis; resample the series "
                         f"before ingest", stage="volume")
    big = np.nonzero(gaps > MISSING_GAP_FACTOR * spacing)[0]
    if len(big):
        listed = "; ".join(f"{gaps[i]:.2f} mm between {_fmt(slices[i].position)} and "
                           f"{_fmt(slices[i + 1].position)} (~{round(gaps[i] / spacing) - 1} slice(s))"
                           for i in big[:MAX_LISTED])
        raise InputError(f"missing slice(s): the median spacing is {spacing:.3f} mm but there are "
                         f"{len(big)} gap(s) over {MISSING_GAP_FACTOR}x that: {listed}", stage="volume")
    dev = np.abs(gaps - spacing)
    odd = np.nonzero(dev > UNEVEN_NOTE_MM)[0]
    if not len(odd):
        return slices, spacing, []
    listed = ", ".join(f"{gaps[i]:.3f} mm after {_fmt(slices[i].position)}" for i in odd[:MAX_LISTED])
    message = (f"uneven slice spacing: median {spacing:.3f} mm, {len(odd)} gap(s) differ by up to "
               f"{dev.max():.3f} mm: {listed}")
    if dev.max() > spacing_tolerance_mm:
        raise InputError(f"{message}; beyond the tolerance of {spacing_tolerance_mm} mm "
                         f"(ct.slice_spacing_tolerance_mm); resample the series or raise the tolerance",
                         stage="volume")
    return slices, spacing, [message + " (within tolerance; the median spacing is used)"]


def read_volume(datasets: list[tuple[str, Dataset]], *, hu_dtype: str = "float32",
                spacing_tolerance_mm: float = 0.1) -> Volume:
    """Build the HU volume of one CT series from ``[(file name, dataset), ...]`` in any order."""
    if not datasets:
        raise InputError("the CT series has no files", stage="volume")
    slices = [s for name, ds in datasets for s in slices_of(ds, name=name)]
    slices, spacing, warnings = order_slices(slices, spacing_tolerance_mm=spacing_tolerance_mm)
    ref = slices[0]
    hu = np.empty((len(slices), ref.rows, ref.cols), dtype=np.float32)
    for k, s in enumerate(slices):
        raw = s.load()
        hu[k] = raw * np.float32(s.slope) + np.float32(s.intercept) if (s.slope, s.intercept) != (1, 0) else raw
    if hu_dtype == "int16":
        hu = _to_int16(hu, slices)
    elif hu_dtype != "float32":
        raise ValueError(f"hu_dtype must be 'float32' or 'int16', got {hu_dtype!r}")
    row_dir, col_dir = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * ref.spacing_rc[1]  # along a row: column index i, column spacing
    affine[:3, 1] = col_dir * ref.spacing_rc[0]  # down a column: row index j, row spacing
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = ref.position
    return Volume(hu=hu, affine_lps=affine, positions_mm=np.array([s.position for s in slices]),
                  slice_ids=tuple(s.uid for s in slices), warnings=tuple(warnings))


def _to_int16(hu: np.ndarray, slices: list[_Slice]) -> np.ndarray:
    fractional = [s for s in slices if not (float(s.slope).is_integer() and float(s.intercept).is_integer())]
    if fractional:
        raise InputError(f"{fractional[0].label} has RescaleSlope {fractional[0].slope} / RescaleIntercept "
                         f"{fractional[0].intercept}: HU are not whole numbers; set ct.hu_dtype=float32",
                         stage="volume")
    lo, hi = float(hu.min()), float(hu.max())
    if lo < -32768 or hi > 32767:
        raise InputError(f"HU range [{lo}, {hi}] does not fit int16; set ct.hu_dtype=float32", stage="volume")
    return hu.astype(np.int16)
