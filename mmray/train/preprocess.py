"""Fold-safe preprocessing: training table -> per-modality tensors of the Batch contract.

The store's point-in-time join gives one row per (patient, label time) with
columns ``<group>__<col>`` and ``has_<group>``.  A :class:`ModalityLayout`
maps model modalities to store groups (``mutations_cnv`` = ``mutations`` +
``cnv``, ``slide`` = ``wsi_patient`` + ``wsi_nuclei_patient``, ``ct_deep`` = ``ct_embedding``).  :class:`Preprocessor` fits, per
modality and on the *training rows that have that modality only*:

1. one-hot levels of any non-numeric column (bool -> 0/1);
2. median imputation (:class:`mmray.features.clinical.FoldImputer`) for
   values missing inside a present modality;
3. optional top-k by variance (:class:`mmray.features.selection.VarianceTopK`);
4. optional label screening (:class:`mmray.features.selection.CorrelationFilter`,
   Cox score test for survival, ANOVA for subtype) -- the only label-dependent
   step, and it sees training labels only;
5. standard scaling (:class:`mmray.features.selection.StandardScalerByGene`);
6. optional PCA to ``k`` whitened components (scikit-learn), label-free: a
   learned embedding (``ct_deep``: 256 correlated dimensions for ~100 patients)
   is summarised by its main directions of variation instead of being fed
   whole to a network that would fit its noise.

Rows without a modality are never used for fitting, come out as zeros, and
are masked.  :func:`prepare_fold` does the whole thing for one fold of a
table given the saved folds, so nothing can be fitted on the held-out rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.features.clinical import FoldImputer
from mmray.features.selection import CorrelationFilter, StandardScalerByGene, VarianceTopK
from mmray.models.batch import Batch, PatientDataset, make_batch
from mmray.train.folds import split

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "clinical": ("clinical",), "expression": ("expression",), "mutations_cnv": ("mutations", "cnv"),
    "proteins": ("proteins",), "radiomics": ("radiomics",), "ct_deep": ("ct_embedding",),
    "slide": ("wsi_patient", "wsi_nuclei_patient"),  # embeddings + nuclei
}
_META_SUFFIXES = ("__event_time", "__bag_ids")
# Bookkeeping columns some groups carry next to their features, never model inputs: the WSI aggregates'
# encoder, slide list and extremum locations; the radiomics rows' study/series keys, file hashes and paths,
# software versions and acquisition geometry; the CT embedding rows' resume signature and crop mask size.
# Matched against the column name after ``<group>__``.
META_COLUMNS = re.compile(
    r"^(encoder_id|embedding_dim|slide_ids|.*_arg(max|min)_(x|y|slide)"
    r"|study_key|.*_series_key|source_sha256|params_hash|.*_version|segment_labels|volume_warnings|.*_path"
    r"|n_slices|rows|columns|seg_frames|spacing_[xyz]_mm|signature|crop_mask_voxels)$")
# A text column with more levels than this fraction of the training rows is an identifier, not a category.
MAX_LEVEL_FRACTION = 0.5


@dataclass(frozen=True)
class ModalityLayout:
    """Which columns of the joined training table belong to which modality, and where the labels are."""

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_GROUPS))
    id_col: str = "patient_id"
    time_col: str = "time_days"
    event_col: str = "event"
    subtype_col: str = "subtype"

    def columns(self, table: pd.DataFrame, modality: str) -> list[str]:
        prefixes = tuple(f"{g}__" for g in self._groups(modality))
        return [c for c in table.columns if str(c).startswith(prefixes) and not str(c).endswith(_META_SUFFIXES)
                and not META_COLUMNS.match(str(c).split("__", 1)[1])]

    def present(self, table: pd.DataFrame, modality: str) -> np.ndarray:
        """``[n]`` bool: any of the modality's groups joined (``has_<group>``), else any non-null value."""
        flags = [f"has_{g}" for g in self._groups(modality) if f"has_{g}" in table.columns]
        if flags:
            return table[flags].fillna(False).astype(bool).any(axis=1).to_numpy()
        cols = self.columns(table, modality)
        return table[cols].notna().any(axis=1).to_numpy() if cols else np.zeros(len(table), bool)

    def modalities_in(self, table: pd.DataFrame) -> list[str]:
        return [m for m in self.groups if self.columns(table, m)]

    def _groups(self, modality: str) -> tuple[str, ...]:
        if modality not in self.groups:
            raise DataError(f"layout has no modality {modality!r}; it has {sorted(self.groups)}")
        return tuple(self.groups[modality])


class _Block:
    """One modality's fitted transform chain (see module doc)."""

    def __init__(self, columns: list[str], *, top_k_var: int | None, screen: dict | None, task: str,
                 pca: int | None = None):
        self.columns, self.top_k_var, self.screen, self.task, self.pca = columns, top_k_var, screen, task, pca

    def _encode(self, frame: pd.DataFrame, *, fitting: bool) -> pd.DataFrame:
        if fitting:
            self.levels_ = {c: sorted(frame[c].dropna().astype(str).unique()) for c in self.columns
                            if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))}
            cap = max(10, MAX_LEVEL_FRACTION * len(frame))
            self.dropped_ = [c for c, lev in self.levels_.items() if len(lev) > cap or len(lev) < 2]
            self.levels_ = {c: lev for c, lev in self.levels_.items() if c not in self.dropped_}
        keep = [c for c in self.columns if c not in self.dropped_]
        dtypes = frame.dtypes
        # Numeric and bool columns convert in one block: per-column conversion of a few thousand
        # columns (slide extremum features) costs seconds, which a served model pays per request.
        direct = [c for c in keep if c not in self.levels_
                  and (pd.api.types.is_numeric_dtype(dtypes[c]) or pd.api.types.is_bool_dtype(dtypes[c]))]
        block = frame[direct].to_numpy(dtype=float, na_value=np.nan) if direct else None
        at = {c: j for j, c in enumerate(direct)}
        names, cols = [], []
        for c in keep:
            if c in self.levels_:
                vals = frame[c].astype(object)
                for lev in self.levels_[c]:
                    names.append(f"{c}={lev}")
                    cols.append((vals.astype(str) == lev).where(vals.notna(), False).to_numpy(dtype=float))
            else:
                names.append(c)
                cols.append(block[:, at[c]] if c in at
                            else pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float))
        values = np.column_stack(cols) if cols else np.empty((len(frame), 0))
        return pd.DataFrame(values, columns=names, index=frame.index)

    def fit(self, frame: pd.DataFrame, target) -> _Block:
        X = self._encode(frame, fitting=True)
        self.imputer_ = FoldImputer("median").fit(X)
        X = self.imputer_.transform(X)
        self.var_ = VarianceTopK(self.top_k_var).fit(X) if self.top_k_var else None
        if self.var_ is not None:
            X = self.var_.transform(X)
        self.filter_ = None
        if self.screen:
            method = "anova" if self.task == "subtype" else "cox"
            self.filter_ = CorrelationFilter(method, **self.screen).fit(X, target)
            X = self.filter_.transform(X)
        self.scaler_ = StandardScalerByGene().fit(X)
        self.feature_names_ = list(X.columns)
        self.pca_ = None
        if self.pca:
            from sklearn.decomposition import PCA

            k = max(1, min(int(self.pca), X.shape[1], len(X) - 1))
            self.pca_ = PCA(n_components=k, whiten=True, random_state=0).fit(
                np.nan_to_num(np.asarray(self.scaler_.transform(X), dtype=float)))
            self.feature_names_ = [f"pc{i + 1}" for i in range(k)]
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        X = self.imputer_.transform(self._encode(frame, fitting=False))
        for step in (self.var_, self.filter_):
            if step is not None:
                X = step.transform(X)
        X = np.asarray(self.scaler_.transform(X), dtype=float)
        if getattr(self, "pca_", None) is not None:  # (blocks pickled before PCA existed have no pca_)
            X = self.pca_.transform(np.nan_to_num(X))
        return X.astype(np.float32)

    def state(self) -> dict:
        s = {"levels": self.levels_, "median": self.imputer_.statistics_, "mean": self.scaler_.mean_,
             "scale": self.scaler_.scale_, "features": self.feature_names_}
        if self.var_ is not None:
            s["var_support"] = self.var_.support_indices_
        if self.filter_ is not None:
            s["filter_support"], s["filter_p"] = self.filter_.support_indices_, self.filter_.p_values_
        if getattr(self, "pca_", None) is not None:
            s["pca_components"], s["pca_mean"] = self.pca_.components_, self.pca_.mean_
        return s


@dataclass
class Prepared:
    """Transformed rows: per-modality arrays ``[n, d_m]`` (zeros where masked), mask ``[n, M]``, labels."""

    features: dict[str, np.ndarray]
    mask: np.ndarray
    modalities: tuple[str, ...]
    patient_ids: list[str]
    time_days: np.ndarray | None = None
    event: np.ndarray | None = None
    subtype: np.ndarray | None = None

    @property
    def dims(self) -> dict[str, int]:
        return {m: x.shape[1] for m, x in self.features.items()}

    def dataset(self, bags: Sequence[np.ndarray | None] | None = None) -> PatientDataset:
        present = {m: self.mask[:, j] for j, m in enumerate(self.modalities)}
        return PatientDataset(self.features, present, bags=bags, time_days=self.time_days, event=self.event,
                              subtype=self.subtype, patient_ids=self.patient_ids)

    def batch(self) -> Batch:
        return make_batch(self.features, self.mask, modalities=self.modalities, time_days=self.time_days,
                          event=self.event, subtype=self.subtype, patient_ids=self.patient_ids)


class Preprocessor:
    """Per-modality fold-fitted transforms; ``fit`` on training rows, ``transform`` any rows.

    ``top_k_var``, ``screen`` and ``pca`` map modality -> setting (``screen`` takes
    :class:`CorrelationFilter` keywords, e.g. ``{"max_p": 0.05, "top_k": 200}``; ``pca`` a number of components).
    ``subtype_classes`` fixes the class order (default: sorted training labels).
    """

    def __init__(self, layout: ModalityLayout | None = None, *, task: str, modalities: Sequence[str] | None = None,
                 top_k_var: Mapping[str, int] | None = None, screen: Mapping[str, dict] | None = None,
                 subtype_classes: Sequence[str] | None = None, pca: Mapping[str, int] | None = None):
        self.layout = layout or ModalityLayout()
        self.task, self.modalities = task, tuple(modalities) if modalities is not None else None  # (): bags only
        self.top_k_var = {"expression": 1000} if top_k_var is None else dict(top_k_var)
        self.screen = dict(screen or {})
        self.pca = dict(pca or {})
        self.subtype_classes = tuple(subtype_classes) if subtype_classes else None

    def _labels(self, table: pd.DataFrame, *, fitting: bool):
        L = self.layout
        time = event = sub = None
        if L.time_col in table.columns and L.event_col in table.columns:
            time = table[L.time_col].to_numpy(float)
            event = table[L.event_col].astype(bool).to_numpy()
        if self.task == "subtype" and L.subtype_col in table.columns:
            raw = table[L.subtype_col].astype(str)
            if fitting and self.subtype_classes is None:
                self.subtype_classes = tuple(sorted(raw.unique()))
            index = {c: i for i, c in enumerate(self.subtype_classes)}
            unseen = sorted(set(raw) - set(index))
            if unseen:
                raise DataError(f"subtype label(s) {unseen} not among the classes {list(self.subtype_classes)}; "
                                f"pass subtype_classes=... to fix the class list for every fold")
            sub = raw.map(index).to_numpy(np.int64)
        if fitting and self.task.startswith("survival") and (time is None or not event.any()):
            raise DataError(f"survival preprocessing needs {L.time_col!r} and {L.event_col!r} with events "
                            f"among the training rows")
        if fitting and self.task == "subtype" and sub is None:
            raise DataError(f"subtype preprocessing needs the label column {L.subtype_col!r}")
        return time, event, sub

    def fit(self, train: pd.DataFrame) -> Preprocessor:
        """Fit every modality block on the rows of ``train`` that have that modality."""
        mods = self.modalities if self.modalities is not None else tuple(self.layout.modalities_in(train))
        if not mods and self.modalities is None:
            raise DataError(f"no modality columns found; expected prefixes like "
                            f"{[g + '__' for gs in self.layout.groups.values() for g in gs]}")
        time, event, sub = self._labels(train, fitting=True)
        self.blocks_: dict[str, _Block] = {}
        for m in mods:
            cols = self.layout.columns(train, m)
            if not cols:
                raise DataError(f"modality {m!r}: no columns with prefixes "
                                f"{[g + '__' for g in self.layout.groups[m]]} in the table")
            rows = self.layout.present(train, m)
            if not rows.any():
                raise DataError(f"modality {m!r}: no training row has it; leave it out of modalities")
            target = sub[rows] if self.task == "subtype" else (time[rows], event[rows])
            block = _Block(cols, top_k_var=self.top_k_var.get(m), screen=self.screen.get(m), task=self.task,
                           pca=getattr(self, "pca", {}).get(m))
            self.blocks_[m] = block.fit(train.loc[rows], target)
        self.modalities_ = tuple(mods)
        return self

    def transform(self, table: pd.DataFrame) -> Prepared:
        feats, mask = {}, np.zeros((len(table), len(self.modalities_)), bool)
        for j, m in enumerate(self.modalities_):
            rows = self.layout.present(table, m)
            x = self.blocks_[m].transform(table)
            feats[m] = np.where(rows[:, None], x, 0.0).astype(np.float32)
            mask[:, j] = rows
        time, event, sub = self._labels(table, fitting=False)
        ids = table[self.layout.id_col].astype(str).tolist() if self.layout.id_col in table.columns else \
            [str(i) for i in range(len(table))]
        return Prepared(features=feats, mask=mask, modalities=self.modalities_, patient_ids=ids,
                        time_days=time, event=event, subtype=sub)

    @property
    def dims(self) -> dict[str, int]:
        return {m: len(b.feature_names_) for m, b in self.blocks_.items()}

    def state(self) -> dict:
        """Everything fitted, as plain arrays/lists (for equality checks and checkpoints)."""
        return {"classes": self.subtype_classes, **{m: b.state() for m, b in self.blocks_.items()}}


def prepare_fold(table: pd.DataFrame, folds: pd.DataFrame, *, fold: int, preprocessor: Preprocessor
                 ) -> tuple[Preprocessor, Prepared, Prepared]:
    """Fit ``preprocessor`` on the training rows of ``fold`` and transform both sides."""
    tr, va = split(table, folds, fold=fold, patient_col=preprocessor.layout.id_col)
    train, val = table.iloc[tr], table.iloc[va]
    preprocessor.fit(train)
    return preprocessor, preprocessor.transform(train), preprocessor.transform(val)
