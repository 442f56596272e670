"""A DICOM SEG (read with highdicom) to a binary mask on its CT volume's grid.

Annotation tools export only the frames that hold a segment (empty slices are
cropped), in their own order.  Each frame is therefore placed on the CT slice
at its ImagePositionPatient (per-frame PlanePositionSequence), within
``tolerance_mm``; slices without a frame stay zero.  A SEG with any selected
frame that matches no CT slice, or with another orientation, pixel grid or
frame of reference than the CT, is refused with an
:class:`~mmray.errors.InputError` that lists the unmatched positions and the
nearest CT slice positions.

Segments are chosen by label (case-insensitive); the chosen segments are
merged into one mask with value 1 (what pyradiomics' ``label: 1`` reads).
BINARY, FRACTIONAL (thresholded at half the maximum) and LABELMAP SEGs are
read.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from mmray.errors import InputError
from mmray.ingest.ct_volume import MAX_LISTED, ORIENTATION_TOL, Volume

STAGE = "segmentation"


@dataclass(frozen=True, eq=False)
class SegMask:
    mask: np.ndarray  # (nz, rows, cols) uint8 in {0, 1}, on the CT volume's grid
    segment_numbers: tuple[int, ...]
    segment_labels: tuple[str, ...]
    n_frames: int  # SEG frames placed (of the chosen segments)
    slice_range: tuple[int, int]  # first and last CT slice index holding the mask

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


def _item(frame: Dataset, shared: Dataset, sequence: str) -> Dataset | None:
    for group in (frame, shared):
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def choose_segments(seg: hd.seg.Segmentation, labels: tuple[str, ...], *, name: str) -> dict[int, str]:
    """``{segment number: label}`` of the segments to use (all when ``labels`` is empty)."""
    available = {int(n): str(seg.get_segment_description(n).segment_label) for n in seg.segment_numbers}
    if not labels:
        return available
    wanted = {label.casefold() for label in labels}
    chosen = {n: lab for n, lab in available.items() if lab.casefold() in wanted}
    if not chosen:
        raise InputError(f"SEG {name} has no segment labelled {sorted(labels)}; its segments: "
                         f"{sorted(available.values())}; set ct.segment_labels accordingly "
                         f"(empty = all segments)", stage=STAGE)
    return chosen


def read_seg(path: str, *, name: str, dataset: Dataset | None = None) -> hd.seg.Segmentation:
    """The SEG at ``path``, or from ``dataset`` when discovery already parsed the file (used up)."""
    try:
        if dataset is not None:
            return hd.seg.Segmentation.from_dataset(dataset, copy=False)
        return hd.seg.segread(path)
    except Exception as e:  # highdicom/pydicom raise many types for malformed SEGs
        raise InputError(f"SEG {name} cannot be read as a DICOM Segmentation ({type(e).__name__}: {e})",
                         stage=STAGE) from e


def _frame_masks(seg: hd.seg.Segmentation, chosen: dict[int, str], *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices used, (n_used, rows, cols) bool masks) for the chosen segments."""
    try:
        stored = seg.get_stored_frames()
    except Exception as e:
        raise InputError(f"SEG {name}: cannot decode its frames ({type(e).__name__}: {e})", stage=STAGE) from e
    if stored.ndim == 2:
        stored = stored[None]
    seg_type = seg.segmentation_type.value
    per_frame = seg.PerFrameFunctionalGroupsSequence
    if seg_type == "LABELMAP":
        masks = np.isin(stored, list(chosen))
        return np.arange(len(per_frame)), masks
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    used = []
    for f, frame in enumerate(per_frame):
        ident = _item(frame, shared, "SegmentIdentificationSequence")
        if ident is not None and int(ident.ReferencedSegmentNumber) in chosen:
            used.append(f)
    used = np.array(used, dtype=int)
    frames = stored[used]
    if seg_type == "FRACTIONAL":
        top = float(seg.get("MaximumFractionalValue", 255) or 255)
        return used, frames.astype(np.float32) >= top / 2
    return used, frames > 0


def place_frames(seg: hd.seg.Segmentation, volume: Volume, *, labels: tuple[str, ...] = (),
                 tolerance_mm: float = 0.1, name: str = "SEG",
                 frame_of_reference_uid: str | None = None) -> SegMask:
    """Put the chosen segments' frames on ``volume``'s slices by position."""
    nz, rows, cols = volume.shape_zyx
    seg_frame_ref = str(seg.get("FrameOfReferenceUID", ""))
    if frame_of_reference_uid and seg_frame_ref and seg_frame_ref != frame_of_reference_uid:
        raise InputError(f"SEG {name} is in another frame of reference than its CT series (FrameOfReferenceUID "
                         f"differs); it cannot be placed on the CT", stage=STAGE)
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise InputError(f"SEG {name} frames are {seg.Rows}x{seg.Columns} pixels but the CT slices are "
                         f"{rows}x{cols}; SEGs on a resampled grid are not supported", stage=STAGE)
    chosen = choose_segments(seg, labels, name=name)
    used, masks = _frame_masks(seg, chosen, name=name)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    direction = volume.direction
    ct_along = volume.positions_mm @ volume.normal
    _, sp_y, sp_x = volume.spacing_mm_zyx
    out = np.zeros((nz, rows, cols), dtype=np.uint8)
    unmatched: list[tuple[np.ndarray, int, float]] = []
    for f, frame_mask in zip(used, masks):
        frame = seg.PerFrameFunctionalGroupsSequence[int(f)]
        plane, orient = _item(frame, shared, "PlanePositionSequence"), _item(frame, shared, "PlaneOrientationSequence")
        if plane is None:
            raise InputError(f"SEG {name} frame {f + 1} has no PlanePositionSequence; frames cannot be placed "
                             f"by position", stage=STAGE)
        if orient is not None:
            iop = np.array([float(v) for v in orient.ImageOrientationPatient])
            if np.abs(iop - np.concatenate([direction[:, 0], direction[:, 1]])).max() > ORIENTATION_TOL:
                raise InputError(f"SEG {name} frame {f + 1} has ImageOrientationPatient {list(iop)}, the CT "
                                 f"{list(np.round(direction[:, :2].T.ravel(), 6))}; it was drawn on another "
                                 f"series", stage=STAGE)
        measures = _item(frame, shared, "PixelMeasuresSequence")
        if measures is not None and "PixelSpacing" in measures:
            ps = [float(v) for v in measures.PixelSpacing]
            if abs(ps[0] - sp_y) > 1e-3 or abs(ps[1] - sp_x) > 1e-3:
                raise InputError(f"SEG {name} has PixelSpacing {ps} but the CT {[sp_y, sp_x]}; SEGs on a "
                                 f"resampled grid are not supported", stage=STAGE)
        pos = np.array([float(v) for v in plane.ImagePositionPatient])
        k = int(np.argmin(np.abs(ct_along - pos @ volume.normal)))
        dist = float(np.linalg.norm(pos - volume.positions_mm[k]))
        if dist > tolerance_mm:
            unmatched.append((pos, k, dist))
            continue
        out[k] |= frame_mask.astype(np.uint8)
    if unmatched:
        raise InputError(_unmatched_message(name, unmatched, n_frames=len(used), volume=volume,
                                            tolerance_mm=tolerance_mm), stage=STAGE)
    hit = np.nonzero(out.any(axis=(1, 2)))[0]
    if not len(hit):
        raise InputError(f"SEG {name}: segment(s) {sorted(chosen.values())} are empty on this CT", stage=STAGE)
    return SegMask(mask=out, segment_numbers=tuple(sorted(chosen)),
                   segment_labels=tuple(chosen[n] for n in sorted(chosen)), n_frames=len(used),
                   slice_range=(int(hit[0]), int(hit[-1])))


def _unmatched_message(name: str, unmatched, *, n_frames: int, volume: Volume, tolerance_mm: float) -> str:
    def fmt(p) -> str:
        return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"

    listed = "; ".join(f"{fmt(pos)} -> nearest CT slice {k} at {fmt(volume.positions_mm[k])}, {dist:.2f} mm away"
                       for pos, k, dist in unmatched[:MAX_LISTED])
    first, last = volume.positions_mm[0], volume.positions_mm[-1]
    return (f"SEG {name}: {len(unmatched)} of {n_frames} frame(s) match no CT slice within {tolerance_mm} mm "
            f"(CT slices run from {fmt(first)} to {fmt(last)}): {listed}; the SEG was drawn on another "
            f"series or its geometry is broken")


def read_seg_mask(path: str, volume: Volume, *, name: str, labels: tuple[str, ...] = (),
                  tolerance_mm: float = 0.1, frame_of_reference_uid: str | None = None,
                  dataset: Dataset | None = None) -> SegMask:
    """Read the SEG at ``path`` (or take its parsed ``dataset``) and place it on ``volume`` (see
    :func:`place_frames`)."""
    seg = read_seg(path, name=name, dataset=dataset)
    return place_frames(seg, volume, labels=labels, tolerance_mm=tolerance_mm, name=name,
                        frame_of_reference_uid=frame_of_reference_uid)
