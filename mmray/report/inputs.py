"""What the report reads from a run: the train job's result files, slide locations, the MLflow registry.

Each loader raises :class:`~mmray.report.document.InputMissing` naming the
command that produces what is absent, so a section can say so instead of
the report failing.
"""

from __future__ import annotations

import io
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mmray.report.document import InputMissing
from mmray.store import FeatureStore, fsio

log = logging.getLogger(__name__)

RESULTS_DIR = "_results"
TILES, SLIDES, PATIENTS = "wsi_tiles", "wsi_slide", "wsi_patient"


def train_command(store: FeatureStore) -> str:
    return f"mmray train --config ray_jobs/configs/train.yaml --store {store.uri}"


def ingest_command(store: FeatureStore, modalities: str = "") -> str:
    mods = f" --modalities {modalities}" if modalities else ""
    return f"mmray ingest --cohort COHORT.yaml --store {store.uri}{mods}"


@dataclass
class TrainRun:
    """One ``mmray train`` run's files under ``<store>/_results/<name>``."""

    name: str
    uri: str
    meta: dict  # results.json without the big record lists
    summary: pd.DataFrame
    predictions: pd.DataFrame
    importances: pd.DataFrame | None
    attention: pd.DataFrame | None
    ablation: pd.DataFrame | None
    ablation_png: bytes | None
    paired: pd.DataFrame | None = None  # paired.csv: every model vs the best single baseline, per fold


def _read_bytes(fs, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def _parquet(fs, path: str) -> pd.DataFrame | None:
    blob = _read_bytes(fs, path)
    return None if blob is None else pq.read_table(io.BytesIO(blob)).to_pandas()


def train_runs(store: FeatureStore) -> list[tuple[str, str]]:
    """``(created_utc, name)`` of every finished train run in the store, oldest first.

    A finished run has ``results.json`` and ``summary.parquet`` directly in its
    folder (tune jobs keep theirs one level down, under ``refit_cv``).
    """
    fs, root = store.filesystem
    base = posixpath.join(root, RESULTS_DIR)
    found = []
    for name in fsio.subdirs(fs, base):
        folder = posixpath.join(base, name)
        if not fsio.exists(fs, posixpath.join(folder, "summary.parquet")):
            continue
        try:
            meta = fsio.get_json(fs, posixpath.join(folder, "results.json"))
        except (FileNotFoundError, OSError, ValueError):
            continue
        found.append((str(meta.get("created_utc") or ""), name))
    return sorted(found)


def load_train_run(store: FeatureStore, name: str | None = None) -> TrainRun:
    """The named run, else the newest one."""
    runs = train_runs(store)
    if not runs:
        raise InputMissing(f"no finished train run under {store.uri}/{RESULTS_DIR}", train_command(store))
    names = [n for _, n in runs]
    if name is None:
        name = names[-1]
    elif name not in names:
        raise InputMissing(f"no finished train run named {name!r} (runs: {', '.join(names)})", train_command(store))
    fs, root = store.filesystem
    folder = posixpath.join(root, RESULTS_DIR, name)
    meta = fsio.get_json(fs, posixpath.join(folder, "results.json"))
    meta = {k: v for k, v in meta.items() if k not in ("results", "summary", "ablation")}
    ablation_csv = _read_bytes(fs, posixpath.join(folder, "ablation.csv"))
    ablation = pd.read_csv(io.BytesIO(ablation_csv)) if ablation_csv and ablation_csv.strip() else None
    predictions = _parquet(fs, posixpath.join(folder, "predictions.parquet"))
    return TrainRun(name=name, uri=f"{store.uri.rstrip('/')}/{RESULTS_DIR}/{name}", meta=meta,
                    summary=_parquet(fs, posixpath.join(folder, "summary.parquet")),
                    predictions=predictions if predictions is not None else pd.DataFrame(),
                    importances=_parquet(fs, posixpath.join(folder, "importances.parquet")),
                    attention=_parquet(fs, posixpath.join(folder, "attention.parquet")),
                    ablation=ablation, ablation_png=_read_bytes(fs, posixpath.join(folder, "ablation.png")),
                    paired=_csv(fs, posixpath.join(folder, "paired.csv")))


def _csv(fs, path: str) -> pd.DataFrame | None:
    blob = _read_bytes(fs, path)
    return pd.read_csv(io.BytesIO(blob)) if blob and blob.strip() else None


def slide_uris(store: FeatureStore, manifest: pd.DataFrame | None = None) -> dict[str, str]:
    """slide_id -> slide file (local path or ``s3://``): the cohort manifest, else the ``wsi_tiles`` lineage
    (paths only in an unpseudonymised store; the report reads the files, it never prints these paths)."""
    from mmray.ingest.pseudonym import SOURCE_LABEL_PREFIX, pseudonymiser_from_env
    from mmray.ingest.slide_ids import slide_list

    out: dict[str, str] = {}
    if manifest is not None and len(manifest):  # the ids the WSI ingest gave (pseudonyms with a key)
        slides, _ = slide_list(manifest, pseudonymiser_from_env())
        out.update({s["slide_id"]: s["uri"] for s in slides})
    if TILES in store.groups():
        for version in store.versions(TILES):  # carried-forward slides are listed by the version that read them
            for src in store.manifest(TILES, version=version).get("sources") or []:
                if src.get("slide_id") and not str(src["uri"]).startswith(SOURCE_LABEL_PREFIX):
                    out.setdefault(str(src["slide_id"]), str(src["uri"]))
    return out


# ------------------------------------------------------------------ registry
def _registry(store: FeatureStore, registry_cfg):
    """A :class:`~mmray.registry.Registry`, or InputMissing when the local registry was never created."""
    from mmray.registry.config import resolve_tracking
    from mmray.registry.registry import Registry

    tracking, _ = resolve_tracking(registry_cfg, store=store.uri)
    if tracking.startswith("sqlite:///") and not Path(tracking[len("sqlite:///"):]).exists():
        # opening would create an empty database: say what is missing instead
        raise InputMissing(f"no MLflow registry at {tracking}",
                           f"mmray signatures --cohort COHORT.yaml --store {store.uri}")
    return Registry(registry_cfg, store=store.uri)


def signature_runs(store: FeatureStore, registry_cfg) -> pd.DataFrame:
    """The newest MLflow run per gene signature (experiment ``registry_cfg.experiment``), one row each."""
    from mmray.registry.lineage import TAG

    reg = _registry(store, registry_cfg)
    command = f"mmray signatures --cohort COHORT.yaml --store {store.uri}"
    exp = reg.client.get_experiment_by_name(registry_cfg.experiment)
    if exp is None:
        raise InputMissing(f"no MLflow experiment {registry_cfg.experiment!r} at {reg.tracking_uri}", command)
    runs = reg.client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    mine = [r for r in runs if r.data.tags.get(TAG + "store") == store.uri] or list(runs)
    rows, seen = [], set()
    for r in mine:
        t, m = r.data.tags, r.data.metrics
        sig = t.get(TAG + "signature")
        if sig is None or sig in seen:
            continue
        seen.add(sig)
        rows.append({"signature": sig, "genes_in_set": _int(t.get(TAG + "signature.n_genes_in_set")),
                     "genes_found": _int(t.get(TAG + "signature.n_genes_found")),
                     "genes": t.get(TAG + "signature.genes", ""),
                     "c_mean": m.get("harrell_c_mean"), "c_sd": m.get("harrell_c_sd"),
                     "c_oof": m.get("harrell_c_oof"), "c_low": m.get("harrell_c_oof_low"),
                     "c_high": m.get("harrell_c_oof_high"), "outcome": t.get(TAG + "outcome", r.info.status),
                     "reason": t.get(TAG + "gate_reason", ""), "model": t.get(TAG + "registered_model", ""),
                     "version": t.get(TAG + "model_version"), "champion": t.get(TAG + "champion") == "true",
                     "gate": _gate_text(r.data.params)})
    if not rows:
        raise InputMissing(f"the MLflow experiment {registry_cfg.experiment!r} holds no signature runs", command)
    return pd.DataFrame(rows)


def registered_models(store: FeatureStore, registry_cfg, *, exclude_prefix: str = "sig__") -> list:
    """Registered models holding the serving alias, other than the per-signature ones."""
    reg = _registry(store, registry_cfg)
    return [m for m in reg.servable() if not m.name.startswith(exclude_prefix)]


def _gate_text(params: dict) -> str:
    """The gate rule a signature run was judged by, from its logged params."""
    metric, threshold = params.get("gate.metric"), params.get("gate.threshold")
    if not metric:
        return "unknown"
    ci = params.get("gate.require_ci_low")
    return f"{metric} >= {threshold}" + (f" and CI low >= {ci}" if ci not in (None, "None", "") else "")


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
