"""Split a cohort into institutions by tissue source site, each a cohort of its own (federated tests, demos).

``mmray synth --sites N`` (or :func:`split_sites` on any local cohort folder
with a ``cohort.yaml``) groups the clinical table's ``tissue_source_site``
codes (else the TCGA barcode's TSS) into ``N`` sites, largest code first into
the site with the fewest patients, and writes ``sites/<name>/`` per site:
its ``cohort.yaml``, ``manifest.csv`` (paths relative to the new folder,
pointing at the shared slides and CT), and only its own patients' rows of
``clinical.csv``, the expression matrix, the MAF and the copy-number table
(the GMT is copied).  Site names are ``tss<code>[_<code>...]`` (valid Ray
resource names: ``site_tss05``).  ``sites/sites.json`` lists each site's
codes and patients count.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from mmray.errors import DataError
from mmray.features.barcodes import parse_sample
from mmray.train.folds import site_from_barcode

SITE_COLUMN = "tissue_source_site"


def _group_codes(counts: dict[str, int], n_sites: int) -> list[list[str]]:
    if n_sites < 1:
        raise DataError(f"--sites must be >= 1, got {n_sites}")
    if n_sites > len(counts):
        raise DataError(f"the cohort has {len(counts)} tissue source site code(s) {sorted(counts)}; "
                        f"cannot split it into {n_sites} sites")
    groups: list[list[str]] = [[] for _ in range(n_sites)]
    load = [0] * n_sites
    for code in sorted(counts, key=lambda c: (-counts[c], c)):
        i = min(range(n_sites), key=lambda j: (load[j], j))
        groups[i].append(code)
        load[i] += counts[code]
    return [sorted(g) for g in groups]


def _patient_of(sample: str) -> str:
    return parse_sample(sample).patient


def _write_matrix(src: Path, dst: Path, patients: set[str], orientation: str) -> None:
    sep = "," if src.suffix == ".csv" else "\t"
    frame = pd.read_csv(src, sep=sep, dtype=str, keep_default_na=False)
    if orientation == "genes_x_samples":
        keep = [frame.columns[0]] + [c for c in frame.columns[1:] if _patient_of(c) in patients]
        frame = frame[keep]
    else:
        frame = frame[frame.iloc[:, 0].map(_patient_of).isin(patients)]
    frame.to_csv(dst, sep=sep, index=False)


def _write_maf(src: Path, dst: Path, patients: set[str]) -> None:
    lines = src.read_text().splitlines(keepends=True)
    comments = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    header = body[0].rstrip("\n").split("\t")
    col = header.index("Tumor_Sample_Barcode")
    kept = [ln for ln in body[1:] if _patient_of(ln.rstrip("\n").split("\t")[col]) in patients]
    dst.write_text("".join(comments + body[:1] + kept))


def split_sites(cohort_dir: str | Path, n_sites: int, *, site_column: str = SITE_COLUMN) -> dict[str, dict]:
    """Write ``<cohort_dir>/sites/<name>/`` per site (module doc); ``{name: {codes, patients, cohort}}``."""
    root = Path(cohort_dir)
    spec = yaml.safe_load((root / "cohort.yaml").read_text())
    clin_ref = spec.get("clinical") or {}
    if not clin_ref:
        raise DataError(f"{root / 'cohort.yaml'}: no clinical table to read the tissue source site from")
    id_col = clin_ref.get("id_column", "patient_id")
    clinical = pd.read_csv(root / clin_ref["path"], dtype=str, keep_default_na=False)
    if site_column in clinical.columns:
        code = clinical[site_column].astype(str)
    else:
        code = clinical[id_col].map(lambda p: site_from_barcode(p) or "")
    if (code == "").any():
        raise DataError(f"{root / clin_ref['path']}: {int((code == '').sum())} patient(s) without a "
                        f"{site_column!r} value or a TCGA barcode to take the site from")
    groups = _group_codes(code.value_counts().to_dict(), n_sites)
    out_root = root / "sites"
    if out_root.exists():
        shutil.rmtree(out_root)
    result = {}
    manifest = pd.read_csv(root / spec["manifest"], dtype=str, keep_default_na=False) if spec.get("manifest") else None
    for codes in groups:
        name = "tss" + "_".join(codes)
        site_dir = out_root / name
        site_dir.mkdir(parents=True)
        patients = set(clinical.loc[code.isin(codes), id_col].astype(str))
        new = dict(spec, name=f"{spec.get('name', 'cohort')}-{name}")
        clinical[clinical[id_col].astype(str).isin(patients)].to_csv(site_dir / Path(clin_ref["path"]).name,
                                                                      index=False, quoting=csv.QUOTE_MINIMAL)
        new["clinical"] = dict(clin_ref, path=Path(clin_ref["path"]).name)
        if spec.get("expression"):
            ref = spec["expression"]
            _write_matrix(root / ref["path"], site_dir / Path(ref["path"]).name, patients,
                          ref.get("orientation", "genes_x_samples"))
            new["expression"] = dict(ref, path=Path(ref["path"]).name)
        for part in ("mutations", "cnv", "signatures"):
            ref = spec.get(part)
            if not ref:
                continue
            path = ref if isinstance(ref, str) else ref["path"]
            dst = site_dir / Path(path).name
            if part == "mutations":
                _write_maf(root / path, dst, patients)
            elif part == "cnv":
                _write_matrix(root / path, dst, patients, "genes_x_samples")
            else:
                shutil.copyfile(root / path, dst)
            new[part] = Path(path).name if isinstance(ref, str) else dict(ref, path=Path(path).name)
        if manifest is not None:
            mine = manifest[manifest["patient_id"].astype(str).isin(patients)].copy()
            mine["path"] = [p if "://" in p or os.path.isabs(p) else os.path.relpath(root / p, site_dir)
                            for p in mine["path"]]
            mine.to_csv(site_dir / "manifest.csv", index=False)
            new["manifest"] = "manifest.csv"
        (site_dir / "cohort.yaml").write_text(f"# Site {name} (tissue source site(s) {', '.join(codes)}) of "
                                              f"{root.name}, written by mmray.synth.sites\n"
                                              + yaml.safe_dump(new, sort_keys=False))
        result[name] = {"codes": codes, "patients": len(patients), "cohort": str(site_dir / "cohort.yaml")}
    (out_root / "sites.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def split_sites_text(cohort_dir: str | Path, n_sites: int) -> str:
    """:func:`split_sites`, then one line per site (what ``mmray synth --sites N`` prints)."""
    return "\n".join(f"site {name}: tissue source site(s) {', '.join(s['codes'])}, {s['patients']} patients: "
                     f"{s['cohort']}" for name, s in split_sites(cohort_dir, n_sites).items())
