"""The generative model behind a synthetic cohort: patients and their hidden truth.

Each patient gets a subtype, a clinical stage and a set of *independent*
per-modality risk factors.  Every modality shows only its own factor, so a
model that fuses modalities can see more of the risk than any single one:

    risk = W_CLINICAL * z_clinical + W_EXPRESSION * z_expression
         + W_MUTATION * z_mutation + W_CT * z_ct + W_WSI * z_wsi

* clinical: stage and age (``z_clinical``);
* expression: a proliferation factor (harmful) and an immune factor
  (protective), carried by the genes of planted signatures;
* mutations + CNV: driver genes with known log-hazard effects;
* CT: tumour size and texture heterogeneity grow with ``z_ct``;
* slide: nuclear density and atypia grow with ``z_wsi``; tissue architecture
  and stain hue depend on the subtype.

Survival times follow a Weibull proportional-hazards model in ``risk`` with
independent uniform censoring.  ``truth.json`` records all of it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from mmray.synth.profiles import SynthProfile

SUBTYPES = ("adenocarcinoma", "squamous_cell", "large_cell")
SUBTYPE_PROBS = (0.5, 0.35, 0.15)
STAGES = ("I", "II", "III", "IV")
STAGE_PROBS = (0.35, 0.3, 0.25, 0.1)
SITES = ("05", "38", "44", "55")  # TCGA tissue-source-site style codes
SITE_PROBS = (0.35, 0.25, 0.25, 0.15)

# Log-hazard weights of each modality's standardised risk factor.  With these,
# the oracle C-index is about 0.8 and each modality's own factor about 0.6-0.65,
# so fusing modalities has real headroom over the best single one.
W_CLINICAL = 0.7
W_EXPRESSION = 0.8
W_MUTATION = 0.65
W_CT = 0.75
W_WSI = 0.8

# Driver mutations: gene -> (prevalence, log-hazard effect when mutated).
DRIVER_MUTATIONS: dict[str, tuple[float, float]] = {
    "STK11": (0.18, 0.8),
    "KEAP1": (0.15, 0.6),
    "EGFR": (0.15, -0.7),
    "TP53": (0.45, 0.25),
    "KRAS": (0.28, 0.0),
}
# Driver copy-number events: gene -> (direction, prevalence, log-hazard effect).
DRIVER_CNV: dict[str, tuple[int, float, float]] = {
    "MYC": (+2, 0.15, 0.6),
    "CDKN2A": (-2, 0.2, 0.5),
}

WEIBULL_SHAPE = 1.2
WEIBULL_SCALE_DAYS = 1500.0
CENSOR_MIN_DAYS = 300.0
CENSOR_MAX_DAYS = 3000.0

CORRUPTION_KINDS = ("truncated_slide", "dicom_no_pixels", "seg_geometry_mismatch", "malformed_table_row")


@dataclass
class Patient:
    """One synthetic patient: identifiers, what they have, and the hidden truth."""

    index: int
    patient_id: str  # TCGA-style patient barcode, e.g. TCGA-05-0003
    site: str
    sex: str
    age_years: float
    smoking: str
    subtype: str
    stage: str
    # Standardised per-modality risk factors (hidden).
    z_clinical: float
    z_prolif: float
    z_immune: float
    z_ct: float
    z_wsi: float
    mutations: dict[str, bool]  # driver gene -> mutated
    cnv: dict[str, int]  # driver gene -> copy-number call (-2..2)
    z_mutation: float
    risk: float  # total log-hazard
    time_days: float
    event: bool
    diagnosis_date: dt.date
    # Modality presence.
    n_slides: int
    has_ct: bool
    has_expression: bool
    has_mutations: bool
    has_cnv: bool
    corruptions: list[str] = field(default_factory=list)
    # Proteins and treatment outcomes: drawn after the rest from their own random streams
    # (mmray.synth.proteomics, mmray.synth.treatment), so they change nothing above.
    has_proteins: bool = False
    z_response: float = 0.0
    z_toxicity: float = 0.0
    response: str | None = None  # best response; None: not evaluated
    toxicity: dict[str, bool] = field(default_factory=dict)  # grade-3+ toxicity -> happened

    @property
    def z_expression(self) -> float:
        return (self.z_prolif - self.z_immune) / np.sqrt(2.0)

    @property
    def sample_barcode(self) -> str:
        """Primary-tumour sample barcode (``-01A``), as TCGA aliquots use."""
        return f"{self.patient_id}-01A"

    @property
    def ct_date(self) -> dt.date:
        return self.diagnosis_date - dt.timedelta(days=7 + self.index % 14)

    @property
    def biopsy_date(self) -> dt.date:
        """The diagnostic biopsy (slides, sequencing) establishes the diagnosis."""
        return self.diagnosis_date

    @property
    def index_date(self) -> dt.date:
        """Prediction time: the diagnosis date, after imaging and biopsy.

        Survival time counts from here, so no patient dies before it.
        """
        return self.diagnosis_date


def _mutation_factor(mutations: dict[str, bool], cnv: dict[str, int]) -> float:
    raw = sum(DRIVER_MUTATIONS[g][1] for g, m in mutations.items() if m)
    raw += sum(DRIVER_CNV[g][2] for g, c in cnv.items() if c == DRIVER_CNV[g][0])
    return raw


def _mutation_factor_moments() -> tuple[float, float]:
    """Mean and sd of the raw driver log-hazard, so z_mutation is standardised."""
    terms = [(p, e) for p, e in DRIVER_MUTATIONS.values()] + [(p, e) for _, p, e in DRIVER_CNV.values()]
    mean = sum(p * e for p, e in terms)
    var = sum(p * (1 - p) * e * e for p, e in terms)
    return mean, float(np.sqrt(var))


def sample_patients(n: int, *, profile: SynthProfile, seed: int) -> list[Patient]:
    """Draw ``n`` patients deterministically from ``seed``."""
    if n < 1:
        raise ValueError("need at least one patient")
    rng = np.random.default_rng([seed, 0])
    mut_mean, mut_sd = _mutation_factor_moments()
    stage_num = np.arange(len(STAGES))
    stage_mean = float(np.dot(stage_num, STAGE_PROBS))
    stage_sd = float(np.sqrt(np.dot((stage_num - stage_mean) ** 2, STAGE_PROBS)))

    patients: list[Patient] = []
    per_site: dict[str, int] = {}
    for i in range(n):
        site = str(rng.choice(SITES, p=SITE_PROBS))
        per_site[site] = per_site.get(site, 0) + 1
        patient_id = f"TCGA-{site}-{1000 + i:04d}"
        sex = "Male" if rng.random() < 0.55 else "Female"
        age = float(np.clip(rng.normal(66, 9), 35, 90))
        smoking = str(rng.choice(["Never", "Former", "Current"], p=[0.15, 0.55, 0.3]))
        subtype = str(rng.choice(SUBTYPES, p=SUBTYPE_PROBS))
        stage_idx = int(rng.choice(len(STAGES), p=STAGE_PROBS))
        z_clin = 0.85 * (stage_idx - stage_mean) / stage_sd + 0.5 * (age - 66) / 9
        z_clin /= np.sqrt(0.85**2 + 0.5**2)
        z_prolif, z_immune, z_ct, z_wsi = rng.normal(size=4)
        mutations = {g: bool(rng.random() < p) for g, (p, _) in DRIVER_MUTATIONS.items()}
        cnv = {g: (d if rng.random() < p else 0) for g, (d, p, _) in DRIVER_CNV.items()}
        z_mut = (_mutation_factor(mutations, cnv) - mut_mean) / mut_sd
        risk = (W_CLINICAL * z_clin + W_EXPRESSION * (z_prolif - z_immune) / np.sqrt(2)
                + W_MUTATION * z_mut + W_CT * z_ct + W_WSI * z_wsi)
        u = rng.random()
        t_event = WEIBULL_SCALE_DAYS * (-np.log(u) * np.exp(-risk)) ** (1 / WEIBULL_SHAPE)
        t_censor = rng.uniform(CENSOR_MIN_DAYS, CENSOR_MAX_DAYS)
        event = bool(t_event <= t_censor)
        time_days = float(max(1.0, round(min(t_event, t_censor))))
        diagnosis = dt.date(2005, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 10)))
        has_wsi = rng.random() < profile.p_wsi
        n_slides = (2 if rng.random() < profile.p_two_slides else 1) if has_wsi else 0
        patients.append(Patient(
            index=i, patient_id=patient_id, site=site, sex=sex, age_years=round(age, 1),
            smoking=smoking, subtype=subtype, stage=STAGES[stage_idx],
            z_clinical=float(z_clin), z_prolif=float(z_prolif), z_immune=float(z_immune),
            z_ct=float(z_ct), z_wsi=float(z_wsi), mutations=mutations, cnv=cnv,
            z_mutation=float(z_mut), risk=float(risk), time_days=time_days, event=event,
            diagnosis_date=diagnosis, n_slides=n_slides,
            has_ct=bool(rng.random() < profile.p_ct),
            has_expression=bool(rng.random() < profile.p_expression),
            has_mutations=bool(rng.random() < profile.p_mutations),
            has_cnv=bool(rng.random() < profile.p_cnv),
        ))
    _ensure_coverage(patients)
    return patients


def _ensure_coverage(patients: list[Patient]) -> None:
    """Small cohorts still show every case tests rely on.

    At least one patient has two slides, one has no slide, one has no CT, one
    has no expression; the first two patients keep every modality.
    """
    n = len(patients)
    if n < 4:
        return
    for p in patients[:2]:
        p.n_slides = max(p.n_slides, 1)
        p.has_ct = p.has_expression = p.has_mutations = p.has_cnv = True
    if not any(p.n_slides == 2 for p in patients):
        patients[0].n_slides = 2
    if not any(p.n_slides == 0 for p in patients[2:]):
        patients[-1].n_slides = 0
    if not any(not p.has_ct for p in patients[2:]):
        patients[-2].has_ct = False
    if not any(not p.has_expression for p in patients[2:]):
        patients[-3].has_expression = False


def assign_corruptions(patients: list[Patient], k: int, *, seed: int) -> list[dict]:
    """Choose ``k`` inputs to break, cycling through the corruption kinds.

    Returns truth entries ``{"kind", "patient_id", ...}``; the writers read
    ``patient.corruptions`` and break the matching file.  Patients 0 and 1 stay
    intact so every modality always has good examples.
    """
    rng = np.random.default_rng([seed, 1])
    entries: list[dict] = []
    used: set[tuple[str, int]] = set()
    order = list(rng.permutation(len(patients)))
    for j in range(k):
        kind = CORRUPTION_KINDS[j % len(CORRUPTION_KINDS)]
        for idx in order:
            p = patients[idx]
            if p.index < 2 or (kind, p.index) in used:
                continue
            eligible = {
                "truncated_slide": p.n_slides > 0,
                "dicom_no_pixels": p.has_ct,
                "seg_geometry_mismatch": p.has_ct and "dicom_no_pixels" not in p.corruptions,
                "malformed_table_row": True,
            }[kind]
            if kind == "dicom_no_pixels" and "seg_geometry_mismatch" in p.corruptions:
                eligible = False
            if eligible:
                used.add((kind, p.index))
                p.corruptions.append(kind)
                entries.append({"kind": kind, "patient_id": p.patient_id})
                break
        else:
            raise ValueError(f"cannot place corruption #{j + 1} ({kind}): not enough patients with that modality")
    return entries
