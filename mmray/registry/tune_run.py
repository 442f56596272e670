"""Read what ``mmray tune`` wrote: best config, refitted best model, refit cross-validation, training rows.

A tune output (``<store>/_results/<run>`` by default, local or ``s3://``)::

    best.json               run, model, task, modalities, hparams, folds, the tune config
    best_model/             the best config fitted on every patient (mmray.tune.tuner.fit_best):
                            spec.json + state.pt + preprocess.pkl (torch) | heec.pkl + columns.json (HEEC)
                            | classic.pkl (coxnet, coxph_ridge, rsf, gbsa, ensemble)
    refit_cv/summary.parquet, refit_cv/results.json
                            the best config cross-validated again on the same folds (the gate's metrics;
                            feature-group versions and the config hash of that run)

:meth:`TuneRun.training_table` rebuilds the rows ``fit_best`` trained on:
the point-in-time join of the pinned feature-group versions, restricted to
the patients of the pinned folds and the rows usable for the task.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from mmray import uri as uri_mod
from mmray.errors import DataError, StoreError
from mmray.store import FeatureStore, training_table

HOW_TO = ("produce one with `mmray tune --store STORE model=MODEL` (it writes <store>/_results/<run>/best.json, "
          "best_model/ and refit_cv/)")
REFIT_HINT = "rerun `mmray tune ... refit=true` so the best config is cross-validated again and refitted"


def resolve_tune_output(path_or_name: str, *, store: str) -> str:
    """A tune output folder: ``path_or_name`` itself when it holds ``best.json``, else ``<store>/_results/<name>``."""
    candidates = [str(path_or_name)]
    if "/" not in str(path_or_name).strip("/"):
        candidates.append(uri_mod.join(str(store), "_results", str(path_or_name)))
    for c in candidates:
        if uri_mod.exists(uri_mod.join(c, "best.json")):
            return c
    tried = " or ".join(candidates)
    raise DataError(f"no tune run at {tried} (no best.json there); {HOW_TO}, then pass its output folder or "
                    f"run name to --tune-run")


def _read(output: str, rel: str, *, hint: str) -> bytes:
    path = uri_mod.join(output, rel)
    try:
        return uri_mod.read_bytes(path)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"tune run {output} has no {rel}: {hint}") from e


@dataclass
class TuneRun:
    output: str
    best: dict  # best.json
    refit: dict  # refit_cv/results.json without its tables
    summary: pd.DataFrame  # refit_cv/summary.parquet
    files: dict[str, bytes]  # best_model/<name> -> bytes

    @property
    def run(self) -> str:
        return str(self.best.get("run") or self.output.rstrip("/").rsplit("/", 1)[-1])

    @property
    def model(self) -> str:
        return str(self.best["model"])

    @property
    def task(self) -> str:
        return str(self.best["task"])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.best["modalities"])

    @property
    def hparams(self) -> dict:
        return dict(self.best.get("hparams") or {})

    @property
    def folds_ref(self) -> str:
        return str(self.refit.get("folds") or self.best["folds"])

    @property
    def feature_versions(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.refit.get("feature_versions") or {}).items()}

    @property
    def labels_group(self) -> str:
        return str((self.best.get("config") or {}).get("labels_group") or "labels")

    @cached_property
    def model_hash(self) -> str:
        """sha256 (16 hex) of the best model's files: identifies this refit."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()[:16]

    def metrics(self) -> dict[str, float]:
        """The refit cross-validation's summary (``harrell_c_mean``, ``_sd``, ``_ci_low``, ...) + tune score."""
        row = self.summary.iloc[0]
        out = {k: float(v) for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if self.best.get("cv_score") is not None:
            out["tune_cv_score"] = float(self.best["cv_score"])
        return out

    def failed_folds(self) -> str | None:
        """Why the refit cross-validation is incomplete, or None."""
        row = self.summary.iloc[0]
        if int(row["n_folds_ok"]) < int(row["n_folds"]):
            return (f"the refit cross-validation failed on {int(row['n_folds']) - int(row['n_folds_ok'])} of "
                    f"{int(row['n_folds'])} folds (see {uri_mod.join(self.output, 'refit_cv', 'results.parquet')})")
        return None

    def torch_parts(self):
        """``(preprocessor, TorchSpec, best weights)`` of a torch best model."""
        import pickle

        import torch

        from mmray.train.epoch import TorchSpec

        for name in ("spec.json", "state.pt", "preprocess.pkl"):
            if name not in self.files:
                raise DataError(f"tune run {self.output}: best_model/ lacks {name}; {REFIT_HINT}")
        spec = TorchSpec(**json.loads(self.files["spec.json"]))
        state = torch.load(io.BytesIO(self.files["state.pt"]), map_location="cpu", weights_only=False)
        return pickle.loads(self.files["preprocess.pkl"]), spec, state["best_model"]

    def heec(self):
        import pickle

        if "heec.pkl" not in self.files:
            raise DataError(f"tune run {self.output}: best_model/ lacks heec.pkl; {REFIT_HINT}")
        return pickle.loads(self.files["heec.pkl"])

    def classic(self):
        """The fitted classical pipeline or ensemble (``best_model/classic.pkl``)."""
        import pickle

        if "classic.pkl" not in self.files:
            raise DataError(f"tune run {self.output}: best_model/ lacks classic.pkl; {REFIT_HINT}")
        return pickle.loads(self.files["classic.pkl"])

    def training_table(self, store: FeatureStore) -> pd.DataFrame:
        """The rows the best model was fitted on (module doc), joined at the pinned versions."""
        from mmray.train.cv import task_rows

        versions = dict(self.feature_versions)
        labels_version = versions.pop(self.labels_group, None)
        group, _, folds_version = self.folds_ref.partition("@")
        try:
            labels = store.read_table(self.labels_group, version=labels_version)
            folds = store.read_table(group, version=folds_version or None)
            table = training_table(store, labels, groups=versions)
        except (StoreError, FileNotFoundError, KeyError) as e:
            raise DataError(f"cannot rebuild the training rows of tune run {self.output} from {store.uri} "
                            f"({self.labels_group}@{labels_version}, {self.folds_ref}, {versions}): {e}; "
                            f"register against the store the run was tuned on") from e
        table = table[table["patient_id"].astype(str).isin(set(folds["patient_id"].astype(str)))]
        table = task_rows(table.reset_index(drop=True), self.task)
        if table.empty:
            raise DataError(f"no usable {self.task} rows for tune run {self.output} in {store.uri}")
        return table

    def folds_hash(self, store: FeatureStore) -> str:
        from mmray.train.signature_data import folds_hash

        group, _, version = self.folds_ref.partition("@")
        return folds_hash(store.read_table(group, version=version or None))


def load_tune_run(output: str) -> TuneRun:
    """Read a tune output (module doc); :class:`DataError` naming what is missing and how to make it."""
    output = str(output)
    if not uri_mod.exists(uri_mod.join(output, "best.json")):
        raise DataError(f"{output} is not a tune run output (no best.json); {HOW_TO}")
    best = json.loads(_read(output, "best.json", hint=HOW_TO))
    missing = [k for k in ("model", "task", "modalities", "folds") if k not in best]
    if missing:
        raise DataError(f"{uri_mod.join(output, 'best.json')} lacks {missing}; it was not written by `mmray tune`")
    summary = pd.read_parquet(io.BytesIO(_read(output, "refit_cv/summary.parquet", hint=REFIT_HINT)))
    if summary.empty:
        raise DataError(f"tune run {output}: refit_cv/summary.parquet is empty; {REFIT_HINT}")
    refit = json.loads(_read(output, "refit_cv/results.json", hint=REFIT_HINT))
    refit = {k: v for k, v in refit.items() if k not in ("results", "summary", "ablation")}
    folder = uri_mod.join(output, "best_model")
    try:
        names = uri_mod.list_files(folder)
    except FileNotFoundError as e:
        raise DataError(f"tune run {output} has no best_model/ folder; {REFIT_HINT}") from e
    files = {n.replace("\\", "/").rsplit("/", 1)[-1]: uri_mod.read_bytes(n) for n in names}
    return TuneRun(output=output, best=best, refit=refit, summary=summary, files=files)

