"""Site stores for federated tests: a synthetic survival cohort split by tissue source site, each site ingested."""

from __future__ import annotations

from pathlib import Path

import yaml

from mmray.ingest.pseudonym import identity
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.synth.sites import split_sites
from mmray.synth.survival_store import write_survival_cohort

TABLES = ("clinical", "expression", "mutations", "cnv")


def write_site_stores(root: Path, *, patients: int = 120, seed: int = 5, n_sites: int = 3) -> dict[str, str]:
    """``{site name: store path}``: ``write_survival_cohort`` -> ``split_sites`` -> table ingest per site."""
    cohort = write_survival_cohort(root / "cohort", patients=patients, seed=seed)
    spec = yaml.safe_load(cohort.read_text())  # the survival cohort writes a MAF and CNV table; use them too
    spec.update(mutations="mutations.maf", cnv="cnv.tsv")
    cohort.write_text(yaml.safe_dump(spec, sort_keys=False))
    stores = {}
    for name, site in split_sites(cohort.parent, n_sites).items():
        store = str(root / "stores" / name)
        run_ingest(IngestConfig(cohort=site["cohort"], store=store, modalities=TABLES), patient_key=identity)
        stores[name] = store
    return stores
