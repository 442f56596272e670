"""Write a whole synthetic cohort: files in real formats, ``cohort.yaml``, ``truth.json``.

Layout of the output folder::

    cohort.yaml      the cohort spec (docs/cohort.md)
    manifest.csv     patient_id, modality, path, item_id, acquisition_date, annotation
    clinical.csv     clinical table with labels, dates, a leaking column, 'Not Collected'
    expression.tsv   genes x samples, TCGA aliquot barcodes
    mutations.maf    MAF 2.4
    cnv.tsv          gene-level thresholded copy number
    signatures.gmt   MSigDB-style gene sets
    proteins.tsv     RPPA-style samples x proteins, with protein_map.tsv (protein -> gene)
    interactions.tsv prior-knowledge network: planted pathway edges plus decoys
    slides/          pyramidal tiled TIFF (JPEG), one page per level
    annotations/     QuPath GeoJSON tumour outlines of some slides (manifest column ``annotation``)
    ct/<patient>/    DICOM CT series + DICOM SEG
    truth.json       the planted effects, per patient and per modality (written last: the cohort is complete)
    .mmray-synth     written first (a rerun into a folder a killed run left is allowed)
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mmray import __version__
from mmray.errors import MmrayError
from mmray.synth import latent
from mmray.synth.clinical import write_clinical
from mmray.synth.ct import write_ct
from mmray.synth.genomics import write_genomics
from mmray.synth.latent import assign_corruptions, sample_patients
from mmray.synth.network import write_interactions
from mmray.synth.profiles import get_profile, with_slide_px
from mmray.synth.proteomics import write_proteins
from mmray.synth.slides import write_slides
from mmray.synth.treatment import append_treatment_columns, plant_treatment, treatment_truth

log = logging.getLogger(__name__)
STARTED = ".mmray-synth"  # written first: this folder is a (possibly unfinished) synthetic cohort


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    n_patients: int
    n_slides: int
    n_ct_studies: int
    n_corrupt: int
    seconds: float
    slide_px: tuple[int, int] | None = None  # level-0 size of every slide
    writer_peak_rss_mib: float | None = None  # the largest peak RSS of a process while it wrote one slide

    def summary(self) -> str:
        size = f" of {self.slide_px[0]:,} x {self.slide_px[1]:,} px" if self.slide_px and self.n_slides else ""
        rss = (f"; slide writer peak RSS {self.writer_peak_rss_mib:,.0f} MiB"
               if self.writer_peak_rss_mib is not None and self.n_slides else "")
        return (f"wrote {self.n_patients} patients ({self.n_slides} slides{size}, {self.n_ct_studies} CT studies, "
                f"{self.n_corrupt} deliberately corrupt inputs) to {self.out_dir} in {self.seconds:.1f} s{rss}")


def write_cohort(out_dir: str | Path, *, patients: int | None = None, seed: int = 0,
                 profile: str = "tiny", corrupt: int = 0, slide_px: tuple[int, int] | None = None) -> SynthResult:
    """Write a synthetic cohort; deterministic for ``(patients, seed, profile, corrupt, slide_px)``.

    ``slide_px = (width, height)`` replaces the profile's level-0 slide size.
    """
    start = time.perf_counter()
    prof = with_slide_px(get_profile(profile), slide_px)
    n = prof.default_patients if patients is None else patients
    if n < 1:
        raise MmrayError(f"--patients must be at least 1, got {n}")
    out = Path(out_dir)
    ours = (out / "cohort.yaml").exists() or (out / STARTED).exists()
    if out.exists() and any(out.iterdir()) and not ours:
        raise MmrayError(f"{out} exists and is not an mmray cohort folder; choose an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    # Claim the folder before the first file, so a run killed midway is recognised and redone, and drop
    # truth.json, written last, so a half-rewritten cohort never passes for a finished one.
    (out / STARTED).write_text(json.dumps({"profile": prof.name, "patients": n, "seed": seed}) + "\n")
    (out / "truth.json").unlink(missing_ok=True)

    people = sample_patients(n, profile=prof, seed=seed)
    corruptions = assign_corruptions(people, corrupt, seed=seed)
    log.info("synth: %d patients, profile %s, seed %d, %d corrupt inputs", n, prof.name, seed, corrupt)

    stage_start = time.perf_counter()
    writer_stats: list[dict] = []
    slides = write_slides(people, out_dir=out / "slides", profile=prof, seed=seed, writer_stats=writer_stats)
    peaks = [w["peak_rss_mib"] for w in writer_stats if w["peak_rss_mib"] is not None]
    log.info("synth: %d slides of %d x %d px in %.1f s%s", len(slides), prof.slide_width_px, prof.slide_height_px,
             time.perf_counter() - stage_start, f", writer peak RSS {max(peaks):.0f} MiB" if peaks else "")
    stage_start = time.perf_counter()
    studies = write_ct(people, out_dir=out / "ct", profile=prof, seed=seed)
    log.info("synth: %d CT studies in %.1f s", len(studies), time.perf_counter() - stage_start)
    genomics = write_genomics(people, out_dir=out, profile=prof, seed=seed)
    clinical = write_clinical(people, out_dir=out, seed=seed)
    # Treatment outcomes, proteins and the network draw from their own random streams: the files above
    # are what they were before these parts existed.
    plant_treatment(people, seed=seed)
    new_columns = append_treatment_columns(out / clinical["file"], people, id_column=clinical["id_column"])
    treatment = treatment_truth()
    clinical["columns"] += new_columns
    clinical["labels"].update({"response": treatment["response"]["column"],
                               "toxicity": treatment["toxicity"]["columns"],
                               "toxicity_value": treatment["toxicity"]["value"]})
    proteins = write_proteins(people, out_dir=out, genes=genomics["genes"], seed=seed)
    network = write_interactions(out_dir=out, genes=genomics["genes"], seed=seed)

    _write_manifest(out / "manifest.csv", slides=slides, studies=studies)
    _write_spec(out / "cohort.yaml", name=f"synth-{prof.name}-{n}p-seed{seed}", genomics=genomics,
                clinical=clinical, proteins=proteins, network=network)
    _attach_files(corruptions, slides=slides, studies=studies, genomics=genomics, clinical=clinical)
    truth = {
        "generator": {"mmray_version": __version__, "profile": prof.name, "patients": n, "seed": seed,
                      "corrupt": corrupt, "slide_px": [prof.slide_width_px, prof.slide_height_px]},
        "model": {
            "risk": "W_CLINICAL*z_clinical + W_EXPRESSION*(z_prolif - z_immune)/sqrt(2) "
                    "+ W_MUTATION*z_mutation + W_CT*z_ct + W_WSI*z_wsi",
            "weights": {"clinical": latent.W_CLINICAL, "expression": latent.W_EXPRESSION,
                        "mutations_cnv": latent.W_MUTATION, "ct": latent.W_CT, "wsi": latent.W_WSI},
            "survival": {"baseline": "weibull", "shape": latent.WEIBULL_SHAPE,
                         "scale_days": latent.WEIBULL_SCALE_DAYS,
                         "censoring_days": [latent.CENSOR_MIN_DAYS, latent.CENSOR_MAX_DAYS]},
            "wsi": "nuclear density and atypia of the tumour grow with z_wsi; architecture and hue depend on "
                   "subtype; non-tumour tissue (stroma, normal glands) carries no signal; stain colours depend "
                   "on the tissue source site, independent of risk",
            "ct": "tumour radius and texture heterogeneity grow with z_ct",
            "proteins": "no factor of their own: proliferation/immune proteins show z_prolif/z_immune (the "
                        "expression factor), driver readouts the driver calls (mmray.synth.proteomics)",
        },
        "patients": [_patient_truth(p) for p in people],
        "genomics": {k: v for k, v in genomics.items() if k != "files"},
        "clinical": {k: v for k, v in clinical.items() if k != "file"},
        "treatment": treatment,
        "proteins": proteins,
        "interactions": network,
        "slides": slides,
        "ct": studies,
        "corruptions": corruptions,
    }
    tmp = out / ".truth.json.tmp"  # renamed into place: a reader sees all of truth.json or none
    tmp.write_text(json.dumps(truth, indent=1, default=str) + "\n")
    tmp.replace(out / "truth.json")
    return SynthResult(out_dir=out, n_patients=n, n_slides=len(slides), n_ct_studies=len(studies),
                       n_corrupt=len(corruptions), seconds=time.perf_counter() - start,
                       slide_px=(prof.slide_width_px, prof.slide_height_px),
                       writer_peak_rss_mib=max(peaks) if peaks else None)


def _patient_truth(p: latent.Patient) -> dict:
    d = asdict(p)
    d["z_expression"] = p.z_expression
    d["sample_barcode"] = p.sample_barcode
    d["index_date"] = p.index_date.isoformat()
    d["diagnosis_date"] = p.diagnosis_date.isoformat()
    return d


def _write_manifest(path: Path, *, slides: list[dict], studies: list[dict]) -> None:
    rows = [{"patient_id": s["patient_id"], "modality": "wsi", "path": s["path"], "item_id": s["slide_id"],
             "acquisition_date": s["acquisition_date"], "annotation": s.get("annotation") or ""} for s in slides]
    rows += [{"patient_id": s["patient_id"], "modality": "ct", "path": s["path"], "item_id": s["study_uid"],
              "acquisition_date": s["acquisition_date"], "annotation": ""} for s in studies]
    rows.sort(key=lambda r: (r["patient_id"], r["modality"], r["item_id"]))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patient_id", "modality", "path", "item_id", "acquisition_date",
                                               "annotation"])
        writer.writeheader()
        writer.writerows(rows)


def _write_spec(path: Path, *, name: str, genomics: dict, clinical: dict, proteins: dict, network: dict) -> None:
    files = genomics["files"]
    spec = {
        "name": name,
        "manifest": "manifest.csv",
        "clinical": {"path": clinical["file"], "id_column": clinical["id_column"]},
        "expression": {"path": files["expression"], "orientation": "genes_x_samples"},
        "mutations": files["mutations"],
        "cnv": files["cnv"],
        "signatures": files["signatures"],
        "proteins": {"path": proteins["files"]["proteins"], "orientation": "samples_x_proteins",
                     "gene_map": proteins["files"]["map"]},
        "interactions": network["file"],
        "labels": clinical["labels"],
    }
    header = "# Synthetic cohort written by `mmray synth`; see docs/cohort.md for the fields.\n"
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))


def _attach_files(corruptions: list[dict], *, slides, studies, genomics, clinical) -> None:
    """Name, in each corruption's truth entry, the file(s) that were broken."""
    for entry in corruptions:
        pid, kind = entry["patient_id"], entry["kind"]
        if kind == "truncated_slide":
            entry["files"] = [s["path"] for s in slides if s["patient_id"] == pid and s.get("corrupt") == kind]
        elif kind in ("dicom_no_pixels", "seg_geometry_mismatch"):
            entry["files"] = [s["path"] for s in studies if s["patient_id"] == pid and s.get("corrupt") == kind]
        else:
            rows = [r for r in genomics.get("corrupt_rows", []) + clinical.get("corrupt_rows", [])
                    if pid in json.dumps(r)]
            entry["rows"] = rows
