"""Synthetic chest CT studies: a DICOM CT series plus a DICOM SEG per patient.

Each study shows a body (fat ring around soft tissue), two lungs, a vertebra and
one irregular tumour in a lung.  Tumour radius and texture heterogeneity grow
with the patient's hidden ``z_ct``, so radiomics can recover the CT risk factor.

Files look like a hospital export: one file per slice named by its
SOPInstanceUID (file order is not slice order), instance numbers shuffled for
odd-indexed patients (readers must sort by ImagePositionPatient), stored values
``HU + 1024`` with RescaleIntercept -1024, and PHI in the headers.  PatientID is
a hospital MRN; the research barcode lives in ClinicalTrialSubjectID (with
ClinicalTrialSiteID = the TCGA site), where de-identification profiles keep a
subject's research ID.

Determinism: pixels come from ``default_rng([seed, 3, index])``, headers from
``default_rng([seed, 3, index, 1])`` and UIDs are hashed from (seed, index), so
one seed gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter

from mmray.synth.ct_seg import write_seg
from mmray.synth.latent import Patient
from mmray.synth.parallel import parallel_map
from mmray.synth.profiles import SynthProfile

TISSUES = ("air", "fat", "soft_tissue", "lung", "bone", "tumour")
TISSUE_CODE = {name: i for i, name in enumerate(TISSUES)}
TISSUE_HU = np.array([-1000.0, -100.0, 40.0, -850.0, 450.0, 30.0])
TISSUE_NOISE_HU = np.array([4.0, 12.0, 12.0, 20.0, 40.0, 0.0])  # tumour has its own texture
LUNG_TEXTURE_HU = 25.0
RESCALE_INTERCEPT = -1024
HU_MIN, HU_MAX = -1024, 3071
TUMOUR_MEAN_HU = 30.0
TUMOUR_LOBULATION = 0.25  # edge radius varies within R * (1 +- this)
CT_CORRUPTIONS = ("dicom_no_pixels", "seg_geometry_mismatch")


@dataclass(frozen=True)
class CtVolume:
    """One synthetic CT volume and its truth.  Arrays are (z, y, x), index 0 = lowest z."""

    hu: np.ndarray  # int16 Hounsfield units
    tissue: np.ndarray  # uint8 codes into TISSUES
    spacing_mm_zyx: tuple[float, float, float]
    origin_mm: tuple[float, float, float]  # (x, y, z) LPS of voxel (0, 0, 0) = its ImagePositionPatient
    tumour_radius_mm: float
    tumour_texture_std_hu: float

    @property
    def mask(self) -> np.ndarray:
        return self.tissue == TISSUE_CODE["tumour"]

    def slice_positions_mm(self) -> list[tuple[float, float, float]]:
        x0, y0, z0 = self.origin_mm
        return [(x0, y0, round(z0 + k * self.spacing_mm_zyx[0], 4)) for k in range(self.hu.shape[0])]


def tumour_radius_mm(z_ct: float) -> float:
    """Nominal tumour radius before clipping to the anatomy."""
    return 12.0 * float(np.exp(0.25 * z_ct))


def tumour_texture_std_hu(z_ct: float) -> float:
    return 15.0 * float(np.exp(0.3 * z_ct))


def synth_ct_volume(patient: Patient, *, profile: SynthProfile, seed: int) -> CtVolume:
    """Render the patient's CT volume; depends only on (seed, patient.index, profile)."""
    rng = np.random.default_rng([seed, 3, patient.index])
    nz, n = profile.ct_slices, profile.ct_matrix_px
    sp, th = profile.ct_pixel_spacing_mm, profile.ct_slice_thickness_mm
    fov = n * sp
    # Coordinates in mm relative to the volume centre (the scanner isocentre).
    x = ((np.arange(n) - (n - 1) / 2) * sp)[None, None, :]
    y = ((np.arange(n) - (n - 1) / 2) * sp)[None, :, None]
    z_half = (nz - 1) / 2 * th
    z = ((np.arange(nz) - (nz - 1) / 2) * th)[:, None, None]
    z0 = round(float(rng.uniform(-260.0, -160.0)), 1)  # table position differs per study
    origin = (round(-(n - 1) / 2 * sp, 4), round(-(n - 1) / 2 * sp, 4), z0)

    body = float(rng.uniform(0.92, 1.05))
    a, b, ring = 0.42 * fov * body, 0.30 * fov * body, 0.035 * fov
    lung_cx, lung_cy = 0.19 * fov * body, -0.01 * fov
    lung_ax, lung_by = 0.15 * fov * body, 0.19 * fov * body
    lung_scale = 1.0 - 0.1 * (z / max(z_half, 1e-6)) ** 2  # lungs narrow towards apex and base

    tissue = np.zeros((nz, n, n), dtype=np.uint8)
    outer = (x / a) ** 2 + (y / b) ** 2 <= 1.0
    inner = (x / (a - ring)) ** 2 + (y / (b - ring)) ** 2 <= 1.0
    tissue[np.broadcast_to(outer, tissue.shape)] = TISSUE_CODE["fat"]
    tissue[np.broadcast_to(inner, tissue.shape)] = TISSUE_CODE["soft_tissue"]
    for side in (-1.0, 1.0):
        lung = ((x - side * lung_cx) / (lung_ax * lung_scale)) ** 2 + ((y - lung_cy) / (lung_by * lung_scale)) ** 2 <= 1
        tissue[lung] = TISSUE_CODE["lung"]
    spine = x**2 + (y - 0.21 * fov * body) ** 2 <= (0.04 * fov) ** 2
    tissue[np.broadcast_to(spine, tissue.shape)] = TISSUE_CODE["bone"]

    # Tumour: size clipped so it sits in a lung and leaves empty slices above and below.
    r_max = min(0.9 * lung_ax, 0.4 * (nz * th)) / (1 + TUMOUR_LOBULATION)
    r_min = min(max(2 * th, 2 * sp, 4.0), r_max)
    radius = float(np.clip(tumour_radius_mm(patient.z_ct), r_min, r_max))
    r_out = radius * (1 + TUMOUR_LOBULATION)
    side = float(rng.choice([-1.0, 1.0]))
    z_room = max(0.0, z_half - r_out - th)
    cz = float(rng.uniform(-z_room, z_room))
    s_c = 1.0 - 0.1 * (cz / max(z_half, 1e-6)) ** 2
    cx = side * lung_cx + float(rng.uniform(-0.5, 0.5)) * max(0.0, lung_ax * s_c - r_out)
    cy = lung_cy + float(rng.uniform(-0.5, 0.5)) * max(0.0, lung_by * s_c - r_out)
    tumour, box = _tumour_blob(rng, centre_mm=(cz, cy, cx), radius_mm=radius, grid=(z[:, 0, 0], y[0, :, 0], x[0, 0, :]))
    tissue[box][tumour] = TISSUE_CODE["tumour"]

    hu = TISSUE_HU[tissue] + TISSUE_NOISE_HU[tissue] * rng.standard_normal(tissue.shape, dtype=np.float32)
    lung_tex = gaussian_filter(rng.standard_normal(tissue.shape, dtype=np.float32), sigma=(0.6, 1.0, 1.0))
    lung_mask = tissue == TISSUE_CODE["lung"]
    hu[lung_mask] += LUNG_TEXTURE_HU * lung_tex[lung_mask] / max(float(lung_tex.std()), 1e-6)
    texture_std = tumour_texture_std_hu(patient.z_ct)
    sigma_mm = 1.5  # texture grain, in mm so it looks alike across profiles
    tex = gaussian_filter(rng.standard_normal(tumour.shape), sigma=(sigma_mm / th, sigma_mm / sp, sigma_mm / sp))
    tex /= max(float(tex[tumour].std()), 1e-6)
    hu[box][tumour] = TUMOUR_MEAN_HU + texture_std * tex[tumour]  # hu[box] is a view
    hu_int = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return CtVolume(
        hu=hu_int, tissue=tissue, spacing_mm_zyx=(th, sp, sp), origin_mm=origin,
        tumour_radius_mm=round(radius, 3), tumour_texture_std_hu=round(texture_std, 3),
    )


def _tumour_blob(rng, *, centre_mm, radius_mm, grid):
    """Star-shaped blob: a sphere whose edge radius varies smoothly with direction.

    Returns (mask over the bounding box, box slices).  Being star-shaped about
    the centre, the slices it touches come out contiguous in practice.
    """
    r_out = radius_mm * (1 + TUMOUR_LOBULATION)
    box, local = [], []
    for c, g in zip(centre_mm, grid):
        idx = np.nonzero(np.abs(g - c) <= r_out)[0]
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
        local.append(g[idx[0]:idx[-1] + 1] - c)
    dz, dy, dx = np.meshgrid(*local, indexing="ij")
    dist = np.sqrt(dz**2 + dy**2 + dx**2)
    unit = np.stack([dz, dy, dx]) / np.maximum(dist, 1e-9)
    # Low-frequency lobulation: a few random plane waves over the unit sphere.
    k = 6
    freq = rng.normal(size=(k, 3))
    freq *= (rng.uniform(2.0, 4.0, size=k) / np.linalg.norm(freq, axis=1))[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=k)
    amp = rng.uniform(0.5, 1.0, size=k)
    wave = np.cos(np.tensordot(freq, unit, axes=(1, 0)) + phase[:, None, None, None])
    lobes = np.tensordot(amp, wave, axes=(0, 0))
    lobes /= max(float(np.abs(lobes).max()), 1e-9)  # random phases cancel; stretch to the full +-1
    return dist <= radius_mm * (1 + TUMOUR_LOBULATION * lobes), tuple(box)


# Fictional people and places for PHI-bearing headers (tests check none leak into outputs).
_LAST = ("Abernathy", "Blackwood", "Castellano", "Delacroix", "Eastwick", "Fairbanks", "Galloway", "Hargreaves",
         "Ingersoll", "Jaramillo", "Kowalczyk", "Lindqvist", "Montgomery", "Nakamura", "Okonkwo", "Pemberton",
         "Quintero", "Rasmussen", "Sorensen", "Thistlewood", "Underhill", "Valentini", "Whitcombe", "Yarborough")
_FIRST = {"M": ("Archibald", "Bartholomew", "Cornelius", "Desmond", "Ezekiel", "Fitzgerald", "Gideon", "Horatio"),
          "F": ("Annabelle", "Beatrix", "Clementine", "Dorothea", "Evangeline", "Florentina", "Georgiana", "Henrietta")}
_STREETS = ("Maplewood Ave", "Larkspur Ln", "Quarry Hill Rd", "Birchbrook Ct", "Old Mill Rd", "Harborview Dr")
_CITIES = ("Brookhaven, OH 44021", "Millbridge, PA 17034", "Cedar Falls, WI 53097", "Riverton, NC 27583")
_HOSPITALS = {
    "05": ("Northfield General Hospital", "1200 Lakeshore Blvd, Northfield, IL 60093"),
    "38": ("St. Aurelia Medical Center", "45 Cathedral Sq, Ashford, VA 22031"),
    "44": ("Westbrook University Hospital", "900 College Ave, Westbrook, ME 04092"),
    "55": ("Pinecrest Regional Cancer Institute", "3100 Summit Rd, Pinecrest, CO 80426"),
}
_DEFAULT_HOSPITAL = ("Lakeside Community Hospital", "77 Harbor St, Lakeside, MI 49116")


def _uid(seed: int, index: int, what: str) -> str:
    return str(generate_uid(entropy_srcs=["mmray.synth.ct", str(seed), str(index), what]))


def _header(patient: Patient, rng: np.random.Generator) -> dict:
    """Patient/study header values, PHI included."""
    sex = "M" if patient.sex.lower().startswith("m") else "F"
    birth = patient.diagnosis_date - dt.timedelta(days=round(patient.age_years * 365.25))
    ct = patient.ct_date
    age = ct.year - birth.year - ((ct.month, ct.day) < (birth.month, birth.day))
    institution, institution_address = _HOSPITALS.get(patient.site, _DEFAULT_HOSPITAL)
    h, m, s = int(rng.integers(7, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    return {
        "PatientName": f"{rng.choice(_LAST)}^{rng.choice(_FIRST[sex])}",
        "PatientID": f"MR{int(rng.integers(10**6, 10**7))}",  # hospital MRN
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": sex,
        "PatientAge": f"{age:03d}Y",
        "PatientAddress": f"{int(rng.integers(10, 9999))} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}",
        "InstitutionName": institution,
        "InstitutionAddress": institution_address,
        "ReferringPhysicianName": f"{rng.choice(_LAST)}^{rng.choice(_FIRST[str(rng.choice(['M', 'F']))])}",
        "AccessionNumber": f"ACC{int(rng.integers(10**8, 10**9))}",
        "StudyID": f"CT{int(rng.integers(10**5, 10**6))}",
        "StudyDate": ct.strftime("%Y%m%d"),
        "StudyTime": f"{h:02d}{m:02d}{s:02d}",
        "SeriesTime": f"{h:02d}{m:02d}{min(s + 30, 59):02d}",
        "ClinicalTrialSponsorName": "National Cancer Institute",
        "ClinicalTrialProtocolID": "TCGA",
        "ClinicalTrialSiteID": patient.site,
        "ClinicalTrialSiteName": institution,
        "ClinicalTrialSubjectID": patient.patient_id,  # research barcode; survives de-identification
    }


PHI_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "InstitutionName",
            "InstitutionAddress", "ReferringPhysicianName", "AccessionNumber", "StudyID")


def _ct_slice(hdr: dict, vol: CtVolume, k: int, *, uids: dict, instance_number: int) -> Dataset:
    """Slice ``k`` (ascending z) as a CT Image Storage dataset with file meta."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uids["slices"][k]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uids["slices"][k]
    for key, value in hdr.items():
        setattr(ds, key, value)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = hdr["StudyDate"]
    ds.AcquisitionTime = ds.ContentTime = hdr["SeriesTime"]
    ds.Modality = "CT"
    ds.Manufacturer = "mmray"
    ds.ManufacturerModelName = "SynthCT"
    ds.StudyDescription = "CT CHEST W CONTRAST"
    ds.SeriesDescription = f"AXIAL {vol.spacing_mm_zyx[0]:g}mm"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    th, sp_y, sp_x = vol.spacing_mm_zyx
    position = vol.slice_positions_mm()[k]
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = position[2]
    ds.PixelSpacing = [sp_y, sp_x]  # row spacing, column spacing
    ds.SliceThickness = th
    ds.SpacingBetweenSlices = th
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = vol.hu.shape[1:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    ds.PixelData = (vol.hu[k].astype(np.int32) - RESCALE_INTERCEPT).astype("<i2").tobytes()
    return ds


def write_ct(patients: list[Patient], *, out_dir: Path, profile: SynthProfile, seed: int) -> list[dict]:
    """Write a CT series and a tumour SEG to ``out_dir/<patient_id>/`` for each patient with CT.

    Returns one truth dict per study, in patient order: patient_id, path
    ("<out_dir name>/<patient_id>", relative to out_dir's parent), study_uid,
    series_uid, seg_series_uid, seg_file (SEG file name in the folder),
    n_slices, shape_zyx, spacing_mm_zyx, origin_mm ((x, y, z) of the lowest-z
    slice, as SimpleITK's GetOrigin), tumour_voxels, tumour_centroid_zyx (voxel
    indices, z ascending), tumour_slices ([first, last], z ascending),
    tumour_radius_mm, tumour_texture_std_hu, tumour_mean_hu, corrupt (None,
    "dicom_no_pixels" or "seg_geometry_mismatch"), corrupt_detail (None,
    {"file", "slice_index"} or {"seg_shift_z_mm"}), instances_shuffled,
    acquisition_date (ISO), phi (header values that must never reach outputs).
    """
    out_dir = Path(out_dir)
    jobs = [(p, out_dir, profile, seed) for p in patients if p.has_ct]
    return parallel_map(_write_study, jobs, use_ray=profile.use_ray, desc="CT studies")


def _write_study(job: tuple[Patient, Path, SynthProfile, int]) -> dict:
    """Write one study; returns its truth dict (see ``write_ct``)."""
    patient, out_dir, profile, seed = job
    vol = synth_ct_volume(patient, profile=profile, seed=seed)
    rng = np.random.default_rng([seed, 3, patient.index, 1])
    hdr = _header(patient, rng)
    nz = vol.hu.shape[0]
    idx = patient.index
    uids = {
        "study": _uid(seed, idx, "study"), "series": _uid(seed, idx, "series"), "frame": _uid(seed, idx, "frame"),
        "slices": [_uid(seed, idx, f"slice{k}") for k in range(nz)],
    }
    seg_uids = {w: _uid(seed, idx, f"seg-{w}") for w in ("series", "sop", "tracking", "dimension_org")}
    # Head-first numbering (instance 1 = highest z), as scanners do; odd patients get it scrambled.
    shuffled = idx % 2 == 1
    instance = rng.permutation(nz) + 1 if shuffled else nz - np.arange(nz)
    slices = [_ct_slice(hdr, vol, k, uids=uids, instance_number=int(instance[k])) for k in range(nz)]

    corrupt = next((c for c in patient.corruptions if c in CT_CORRUPTIONS), None)
    detail = None
    study_dir = out_dir / patient.patient_id
    study_dir.mkdir(parents=True, exist_ok=True)
    for stale in study_dir.glob("*.dcm"):  # a rerun must not leave another seed's slices in the series
        stale.unlink()

    mask = vol.mask
    tumour_z = np.nonzero(mask.any(axis=(1, 2)))[0]
    first, last = int(tumour_z[0]), int(tumour_z[-1])
    shift_z_mm = 0.0
    if corrupt == "seg_geometry_mismatch":
        # Off the slice grid (not a multiple of the spacing) and off the volume.
        shift_z_mm = round(0.37 * vol.spacing_mm_zyx[0] + 100.0, 4)
        detail = {"seg_shift_z_mm": shift_z_mm}
    seg_file = f"{seg_uids['sop']}.dcm"
    write_seg(
        [slices[k] for k in tumour_z], mask[tumour_z], path=study_dir / seg_file, uids=seg_uids,
        content_date=patient.ct_date, content_time=hdr["SeriesTime"], shift_z_mm=shift_z_mm,
    )

    broken = int(rng.integers(nz)) if corrupt == "dicom_no_pixels" else None
    for k, ds in enumerate(slices):
        name = f"{ds.SOPInstanceUID}.dcm"
        if k == broken:
            del ds.PixelData
            detail = {"file": name, "slice_index": k}
        ds.save_as(study_dir / name, enforce_file_format=True)

    zz, yy, xx = np.nonzero(mask)
    return {
        "patient_id": patient.patient_id,
        "path": f"{out_dir.name}/{patient.patient_id}",
        "study_uid": uids["study"],
        "series_uid": uids["series"],
        "seg_series_uid": seg_uids["series"],
        "seg_file": seg_file,
        "n_slices": nz,
        "shape_zyx": list(vol.hu.shape),
        "spacing_mm_zyx": list(vol.spacing_mm_zyx),
        "origin_mm": list(vol.origin_mm),
        "tumour_voxels": int(mask.sum()),
        "tumour_centroid_zyx": [float(zz.mean()), float(yy.mean()), float(xx.mean())],
        "tumour_slices": [first, last],
        "tumour_radius_mm": vol.tumour_radius_mm,
        "tumour_texture_std_hu": vol.tumour_texture_std_hu,
        "tumour_mean_hu": float(vol.hu[mask].mean()),
        "corrupt": corrupt,
        "corrupt_detail": detail,
        "instances_shuffled": shuffled,
        "acquisition_date": patient.ct_date.isoformat(),
        "phi": [str(hdr[k]) for k in PHI_KEYS],
    }
