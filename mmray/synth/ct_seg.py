"""DICOM SEG for a synthetic CT study: one binary "Tumor" segment, written with highdicom.

Like real annotation exports, the SEG holds frames only for the CT slices that
contain tumour, each frame referencing its source slice and carrying that
slice's ImagePositionPatient, so readers must place frames by position.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import mmray

SEG_SERIES_NUMBER = 300
SEGMENT_LABEL = "Tumor"


def write_seg(
    sources: Sequence[Dataset],
    mask: np.ndarray,
    *,
    path: Path,
    uids: dict[str, str],
    content_date: dt.date,
    content_time: str,
    shift_z_mm: float = 0.0,
) -> hd.seg.Segmentation:
    """Write a binary tumour SEG over ``sources`` (CT slices, ascending z) to ``path``.

    ``mask``: (len(sources), rows, cols) bool, one frame per source slice.
    ``uids`` holds ``series``, ``sop``, ``tracking`` and ``dimension_org``
    (highdicom would draw the last one at random; fixing it keeps files
    reproducible).  ``shift_z_mm`` != 0 moves every frame off its slice along z
    while keeping the references, i.e. a broken export.
    """
    if mask.shape[0] != len(sources):
        raise ValueError(f"mask has {mask.shape[0]} frames for {len(sources)} source slices")
    if shift_z_mm:
        sources = [_shifted(ds, shift_z_mm) for ds in sources]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="mmray.synth.ct", family=codes.cid7162.ArtificialIntelligence, version=mmray.__version__,
        ),
        tracking_uid=uids["tracking"],
        tracking_id="Tumor 1",
        anatomic_regions=[codes.SCT.Lung],
    )
    with _quiet_highdicom():  # its INFO lines quote every source UID: none in mmray's logs
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=uids["series"],
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=uids["sop"],
            instance_number=1,
            manufacturer="mmray",
            manufacturer_model_name="mmray.synth",
            software_versions=mmray.__version__,
            device_serial_number="0",
            series_description="Tumor segmentation",
            content_label="TUMOR",
            content_description="Primary lung tumour",
            # highdicom stamps now() unless told; the study date keeps bytes reproducible.
            content_date=content_date,
            content_time=content_time,
            series_date=content_date,
            series_time=content_time,
            omit_empty_frames=True,
        )
    _fix_dimension_org_uid(seg, uids["dimension_org"])
    # highdicom also stamps now() here and in its ContributingEquipmentSequence item.
    seg.InstanceCreationDate = content_date.strftime("%Y%m%d")
    seg.InstanceCreationTime = content_time
    for item in seg.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = seg.InstanceCreationDate + content_time
    seg.save_as(path)
    return seg


@contextlib.contextmanager
def _quiet_highdicom():
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _shifted(ds: Dataset, shift_z_mm: float) -> Dataset:
    out = copy.deepcopy(ds)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    out.ImagePositionPatient = [x, y, round(z + shift_z_mm, 4)]
    if "SliceLocation" in out:
        out.SliceLocation = round(z + shift_z_mm, 4)
    return out


def _fix_dimension_org_uid(seg: Dataset, uid: str) -> None:
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


def frame_positions_mm(seg: Dataset) -> np.ndarray:
    """(n_frames, 3) ImagePositionPatient of each SEG frame, in frame order."""
    return np.array(
        [[float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
         for fg in seg.PerFrameFunctionalGroupsSequence],
        dtype=float,
    )
