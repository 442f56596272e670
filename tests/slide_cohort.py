"""A small slides-only cohort for tests: synthetic slides, a manifest, a cohort.yaml, and the patients' truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slides import write_slides


def small_slide_cohort(out: Path, *, n: int = 4, seed: int = 3, width_px: int = 1536, height_px: int = 1024):
    """``(folder, patients)``: ``n`` one-slide patients as small synthetic slides (0.5 um/px), ``manifest.csv``
    and ``cohort.yaml`` (nothing else: no tables)."""
    profile = dataclasses.replace(get_profile("tiny"), slide_width_px=width_px, slide_height_px=height_px)
    patients = [dataclasses.replace(p, n_slides=1, corruptions=[]) for p in sample_patients(n, profile=profile,
                                                                                            seed=seed)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recs = write_slides(patients, out_dir=out / "slides", profile=profile, seed=seed)
    rows = ["patient_id,modality,path"] + [f"{r['patient_id']},wsi,{r['path']}" for r in recs]
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    (out / "cohort.yaml").write_text("name: small\nmanifest: manifest.csv\n")
    return out, patients
