"""Model-ready arrays with planted signal, from the same latent patients as the synthetic cohort.

For model, training and metric tests and benchmarks that need features
without running ingest: every modality shows its own latent risk factor
(:mod:`mmray.synth.latent`) plus noise, some also show the subtype, and
slide bags hide the signal in a minority of "tumour" tiles (marked by one
feature) so attention pooling has something to find.  Modality presence
follows the latent patients' flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray.synth.latent import SUBTYPES, sample_patients
from mmray.synth.profiles import get_profile

GROUPS = {"clinical": ("clinical",), "expression": ("expression",), "mutations_cnv": ("mutations", "cnv"),
          "radiomics": ("radiomics",), "slide": ("wsi_patient",)}


@dataclass
class PlantedCohort:
    """``n`` patients: ``features[m]`` ``[n, d_m]`` (values for everyone), ``present[m]`` ``[n]``,
    ``bags`` (``[n_tiles, tile_dim]`` or None), labels, the true ``risk`` and the tile ``tumour`` flags."""

    features: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    bags: list[np.ndarray | None]
    tumour: list[np.ndarray | None]
    time_days: np.ndarray
    event: np.ndarray
    subtype: np.ndarray
    risk: np.ndarray
    patient_ids: list[str]
    columns: dict[str, list[str]]  # modality -> "<group>__<col>" names

    @property
    def n(self) -> int:
        return len(self.patient_ids)

    def prepared(self, idx: np.ndarray | None = None):
        """Rows ``idx`` (default all) as already-transformed model input, absent modalities zeroed and masked
        (:class:`mmray.train.preprocess.Prepared`), for tests and benchmarks that skip the preprocessing."""
        from mmray.train.preprocess import Prepared

        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        mods = tuple(self.features)
        return Prepared(features={m: self.features[m][idx] * self.present[m][idx, None] for m in mods},
                        mask=np.stack([self.present[m][idx] for m in mods], 1), modalities=mods,
                        patient_ids=[self.patient_ids[i] for i in idx], time_days=self.time_days[idx],
                        event=self.event[idx], subtype=self.subtype[idx])

    def table(self) -> pd.DataFrame:
        """The store's joined-table shape: labels, ``<group>__<col>`` (NaN when absent), ``has_<group>``."""
        out = {"patient_id": self.patient_ids, "time_days": self.time_days, "event": self.event,
               "subtype": [SUBTYPES[i] for i in self.subtype]}
        for m, cols in self.columns.items():
            x = np.where(self.present[m][:, None], self.features[m], np.nan)
            for j, c in enumerate(cols):
                out[c] = x[:, j]
            for g in GROUPS.get(m, (m,)):
                out[f"has_{g}"] = self.present[m].copy()
        return pd.DataFrame(out)


def planted_cohort(n: int, *, seed: int, n_expression: int = 30, tile_dim: int = 8,
                   tiles: tuple[int, int] = (3, 20), noise: float = 0.7) -> PlantedCohort:
    """Draw ``n`` latent patients (``demo`` profile presence rates) and planted-signal features."""
    pats = sample_patients(n, profile=get_profile("demo"), seed=seed)
    rng = np.random.default_rng([seed, 7])
    sub = np.array([SUBTYPES.index(p.subtype) for p in pats])
    onehot = np.eye(len(SUBTYPES))[sub] - np.array([0.5, 0.35, 0.15])

    def z(attr):
        return np.array([getattr(p, attr) for p in pats])

    def noisy(signal, width):
        return signal[:, None] + noise * rng.normal(size=(n, width))

    clin = np.concatenate([noisy(z("z_clinical"), 2), rng.normal(size=(n, 2))], 1)
    expr = rng.normal(size=(n, n_expression))
    expr[:, :3] = noisy(z("z_expression"), 3)
    expr[:, 3:6] = onehot @ rng.normal(size=(3, 3)) * 2.0 + noise * rng.normal(size=(n, 3))
    muts = np.array([[float(v) for v in p.mutations.values()] for p in pats])
    cnv = np.array([[float(v) for v in p.cnv.values()] for p in pats])
    rad = np.concatenate([noisy(z("z_ct"), 2), rng.normal(size=(n, 4))], 1)
    slide = np.concatenate([noisy(z("z_wsi"), 2), onehot @ rng.normal(size=(3, 2)) * 2.0
                            + noise * rng.normal(size=(n, 2)), rng.normal(size=(n, 4))], 1)
    features = {"clinical": clin, "expression": expr, "mutations_cnv": np.concatenate([muts, cnv], 1),
                "radiomics": rad, "slide": slide}
    columns = {
        "clinical": ["clinical__stage_score", "clinical__age_score", "clinical__noise_0", "clinical__noise_1"],
        "expression": [f"expression__G{i:04d}" for i in range(n_expression)],
        "mutations_cnv": [f"mutations__{g}" for g in pats[0].mutations] + [f"cnv__{g}" for g in pats[0].cnv],
        "radiomics": [f"radiomics__f{i}" for i in range(rad.shape[1])],
        "slide": [f"wsi_patient__{k}" for k in ("tile_max_0", "region_max_0", "tile_min_1", "region_min_1",
                                                  "tile_mean_0", "tile_mean_1", "tile_mean_2", "tile_mean_3")],
    }
    present = {"clinical": np.ones(n, bool), "expression": z("has_expression").astype(bool),
               "mutations_cnv": np.array([p.has_mutations or p.has_cnv for p in pats]),
               "radiomics": z("has_ct").astype(bool), "slide": z("n_slides") > 0}
    bags, tumour = [], []
    sig = rng.normal(size=(3, tile_dim))
    for i, p in enumerate(pats):
        if p.n_slides == 0:
            bags.append(None)
            tumour.append(None)
            continue
        k = int(rng.integers(tiles[0], tiles[1] + 1))
        is_t = rng.random(k) < 0.3
        is_t[rng.integers(k)] = True
        x = rng.normal(size=(k, tile_dim)).astype(np.float32)
        x[is_t, 0] += 2.0 * p.z_wsi
        x[is_t, 1:] += (onehot[i] @ sig)[1:] * 1.5
        x[is_t, -1] += 3.0  # the "tumour" marker
        bags.append(x)
        tumour.append(is_t)
    return PlantedCohort(features={m: v.astype(np.float32) for m, v in features.items()}, present=present,
                         bags=bags, tumour=tumour, time_days=z("time_days").astype(float),
                         event=z("event").astype(bool), subtype=sub, risk=z("risk"),
                         patient_ids=[p.patient_id for p in pats], columns=columns)


def simple_cohort(n: int, *, seed: int, dims: dict[str, int] | None = None, p_missing: float = 0.25,
                  effect: float = 0.8, tile_dim: int | None = None, tiles: tuple[int, int] = (0, 12)) -> PlantedCohort:
    """A small cohort with a strong, known signal in every modality (for "beats random" tests).

    Column 0 of each modality carries log-hazard ``effect`` (``risk`` sums
    them over all modalities, seen or not); columns 1-3 are shifted by the
    subtype (3 balanced classes).  Each modality is missing with probability
    ``p_missing`` (every patient keeps at least one).  With ``tile_dim``, bags
    of ``tiles`` tiles (0 allowed) where ~30% "tumour" tiles (last feature
    +3) carry the slide's risk and subtype.
    """
    dims = dims or {"clinical": 4, "expression": 12, "radiomics": 6}
    rng = np.random.default_rng([seed, 11])
    sub = rng.integers(0, 3, size=n)
    onehot = np.eye(3)[sub]
    feats, present = {}, {}
    risk = np.zeros(n)
    for m, d in dims.items():
        x = rng.normal(size=(n, d))
        x[:, 1:4] += 1.5 * onehot[:, : max(0, min(3, d - 1))] if d > 1 else 0.0
        risk += effect * x[:, 0]
        feats[m] = x.astype(np.float32)
        present[m] = rng.random(n) >= p_missing
    names = list(dims)
    none = ~np.any([present[m] for m in names], axis=0)
    present[names[0]] = present[names[0]] | none
    bags: list = [None] * n
    tumour: list = [None] * n
    if tile_dim:
        z_slide = rng.normal(size=n)
        risk += effect * z_slide
        sig = rng.normal(size=(3, tile_dim))
        for i in range(n):
            k = int(rng.integers(tiles[0], tiles[1] + 1))
            is_t = rng.random(k) < 0.3
            x = rng.normal(size=(k, tile_dim)).astype(np.float32)
            x[is_t, 0] += 2.0 * z_slide[i]
            x[is_t, 1:] += 1.5 * sig[sub[i]][1:]
            x[is_t, -1] += 3.0
            bags[i], tumour[i] = x, is_t
    t_event = rng.exponential(1.0, size=n) * np.exp(-risk) * 700.0
    t_cens = rng.uniform(200.0, 2500.0, size=n)
    event = t_event <= t_cens
    time_days = np.maximum(1.0, np.round(np.minimum(t_event, t_cens)))
    columns = {m: [f"{GROUPS.get(m, (m,))[0]}__f{j}" for j in range(d)] for m, d in dims.items()}
    return PlantedCohort(features=feats, present=present, bags=bags, tumour=tumour, time_days=time_days,
                         event=event, subtype=sub, risk=risk, patient_ids=[f"P{i:04d}" for i in range(n)],
                         columns=columns)
