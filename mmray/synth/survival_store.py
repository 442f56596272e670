"""A small survival cohort (clinical + expression + GMT) and its feature groups, fast.

For tests, benchmarks and demos of the registry and serving stages, which need
labels and expression but no slides or CT: :func:`write_survival_cohort`
writes the genomics and clinical files of a synthetic cohort (the same
generator as :func:`mmray.synth.cohort.write_cohort`, without images) and a
``cohort.yaml``; :func:`write_survival_groups` writes the ``labels`` and
``expression`` feature groups straight from those files with pandas (sample
barcodes -> their first 12 characters, log2(x + 1)), independent of the
tables ingester; :func:`random_gmt` writes a GMT of many random sets drawn
from the synthetic gene universe (plus a few off-platform genes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mmray.store import FeatureStore
from mmray.synth.clinical import write_clinical
from mmray.synth.genomics import gene_universe, write_genomics
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile


def write_survival_cohort(out_dir: str | Path, *, patients: int = 70, seed: int = 0,
                          profile: str = "tiny") -> Path:
    """Write clinical.csv, expression.tsv, signatures.gmt (+ MAF, CNV) and cohort.yaml; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prof = get_profile(profile)
    people = sample_patients(patients, profile=prof, seed=seed)
    genomics = write_genomics(people, out_dir=out, profile=prof, seed=seed)
    clinical = write_clinical(people, out_dir=out, seed=seed)
    spec = {"name": f"survival-{profile}-{patients}p-seed{seed}",
            "clinical": {"path": clinical["file"], "id_column": clinical["id_column"]},
            "expression": {"path": genomics["files"]["expression"], "orientation": "genes_x_samples"},
            "signatures": genomics["files"]["signatures"],
            "labels": clinical["labels"]}
    path = out / "cohort.yaml"
    path.write_text("# Survival-only synthetic cohort (mmray.synth.survival_store)\n"
                    + yaml.safe_dump(spec, sort_keys=False))
    return path


def write_survival_groups(cohort_yaml: str | Path, store: str | FeatureStore, *, labels_group: str = "labels",
                          expression_group: str = "expression") -> dict[str, str]:
    """Write ``labels`` and ``expression`` groups from a synthetic cohort; ``{group: version}``."""
    from mmray.cohort import load_cohort

    cohort = load_cohort(cohort_yaml)
    st = store if isinstance(store, FeatureStore) else FeatureStore(store)
    spec = cohort.spec
    clin = pd.read_csv(cohort.part_path("clinical"), dtype=str, keep_default_na=False)
    lab = spec.labels
    time_days = pd.to_numeric(clin[lab.time_days], errors="coerce")
    ok = time_days.notna() & (time_days > 0)
    clin, time_days = clin[ok], time_days[ok]
    subtype = clin[lab.subtype] if lab.subtype else pd.Series("", index=clin.index)
    codes = {s: i for i, s in enumerate(sorted(subtype.unique()))}
    labels = pd.DataFrame({
        "patient_id": clin[spec.clinical.id_column].to_numpy(),
        "event_time": pd.to_datetime(clin[lab.index_date], utc=True).to_numpy() if lab.index_date
        else pd.Timestamp("1970-01-01", tz="UTC"),
        "time_days": time_days.to_numpy(dtype=float),
        "event": (clin[lab.event] == lab.event_value).to_numpy(dtype=np.int64),
        "subtype": subtype.to_numpy(),
        "subtype_code": subtype.map(codes).to_numpy(dtype=np.int64),
    })
    expr = pd.read_csv(cohort.part_path("expression"), sep="\t", index_col=0)
    values = np.log2(expr.T.astype(float) + 1.0)
    values.index = [str(s)[:12] for s in values.index]
    values = values[~values.index.duplicated(keep="first")]
    frame = values.reset_index(names="patient_id")
    frame.insert(1, "event_time", pd.Timestamp("1970-01-01", tz="UTC"))
    frame.columns = [str(c) for c in frame.columns]
    return {
        labels_group: st.write_table(labels_group, labels, params={"source": "mmray.synth.survival_store"}),
        expression_group: st.write_table(expression_group, frame,
                                         params={"source": "mmray.synth.survival_store", "transform": "log2p1"}),
    }


def random_gmt(path: str | Path, *, n_sets: int, n_genes: int = 300, seed: int = 0, min_size: int = 5,
               max_size: int = 30, prefix: str = "RANDOM_SET") -> list[str]:
    """Write ``n_sets`` random gene sets from the synthetic platform of ``n_genes`` genes; returns names.

    Every fifth set also names two genes the platform lacks (real GMTs do).
    """
    genes, off_platform = gene_universe(n_genes)
    rng = np.random.default_rng([seed, 77])
    names, lines = [], []
    for k in range(n_sets):
        size = int(rng.integers(min_size, max_size + 1))
        members = [str(g) for g in rng.choice(genes, size=min(size, len(genes)), replace=False)]
        if k % 5 == 0:
            members += list(off_platform[:2])
        name = f"{prefix}_{k:04d}"
        names.append(name)
        lines.append("\t".join([name, "random synthetic set", *members]))
    Path(path).write_text("\n".join(lines) + "\n")
    return names
