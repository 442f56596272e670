"""NIfTI-1 (gzip) files of a CT volume and its mask, written into the store.

Layout under the store root (local or ``s3://``)::

    nifti/<patient_id>/<study_key>/image.nii.gz   HU (float32 or int16)
    nifti/<patient_id>/<study_key>/mask.nii.gz    uint8 {0, 1}

``patient_id`` is the pseudonymised id written to the feature groups and
``study_key`` the hashed StudyInstanceUID (see :mod:`mmray.ingest.ct`); paths
in the ``radiomics`` group are relative to the store root.  The affine is RAS+
(:attr:`Volume.affine_ras`), with qform and sform codes 1 (scanner), so
nibabel and SimpleITK read the same spacing, origin and direction.  The
header holds no DICOM attribute: ``descrip`` is a fixed text, ``db_name`` and
``aux_file`` stay empty.
"""

from __future__ import annotations

import gzip
import posixpath

import nibabel as nib
import numpy as np
import pyarrow.fs as pafs

from mmray.ingest.retry import with_retry
from mmray.store import fsio

NIFTI_DIR = "nifti"


def nifti_gz_bytes(array_zyx: np.ndarray, affine_ras: np.ndarray, *, descrip: str) -> bytes:
    """A ``.nii.gz`` file's bytes for a ``(z, y, x)`` array (stored as x, y, z)."""
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine_ras)
    img.header.set_xyzt_units(xyz="mm")
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    img.header["descrip"] = descrip.encode()[:79]
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def nifti_paths(patient_id: str, study_key: str) -> dict[str, str]:
    """Paths of a study's files, relative to the store root."""
    base = posixpath.join(NIFTI_DIR, patient_id, study_key)
    return {"image": posixpath.join(base, "image.nii.gz"), "mask": posixpath.join(base, "mask.nii.gz")}


def write_study_nifti(fs: pafs.FileSystem, root: str, *, patient_id: str, study_key: str, hu_zyx: np.ndarray,
                      mask_zyx: np.ndarray, affine_ras: np.ndarray, tries: int = 4,
                      base_delay_s: float = 0.5) -> dict[str, str]:
    """Write image and mask; returns their paths relative to the store root."""
    rel = nifti_paths(patient_id, study_key)
    blobs = {"image": nifti_gz_bytes(hu_zyx, affine_ras, descrip="mmray CT HU"),
             "mask": nifti_gz_bytes(mask_zyx.astype(np.uint8), affine_ras, descrip="mmray segmentation mask")}
    for what, data in blobs.items():
        path = posixpath.join(root, rel[what])
        with_retry(lambda p=path, d=data: fsio.put_bytes(fs, p, d), what=f"write {rel[what]}", tries=tries,
                   base_delay_s=base_delay_s)
    return rel
