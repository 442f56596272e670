"""HEEC: extremum-encoded slide features + fold-fitted genomics screening + LightGBM.

The model the reference programme used when neural fusion lost to the best
single modality: a gradient-boosted tree ensemble over one wide table

* slide features at both scales as the WSI stage writes them (patient-level
  ``tile_max_<i>``, ``tile_min_<i>``, ``region_max_<i>``, ``region_min_<i>``,
  ``tile_mean_<i>`` under the ``wsi_patient__`` group), kept as they are;
* genomics columns (``expression__``, ``mutations__``, ``cnv__``) screened on
  the *training rows only*: features whose univariate association with the
  target is not significant (``p > screen_alpha``) are dropped, at most
  ``max_genomic`` kept (:class:`mmray.features.selection.CorrelationFilter`).
  Survival uses the univariate Cox score test at ``beta = 0``: its numerator
  is the covariance of the feature with the null model's martingale
  residuals, it is the locally most powerful test of a univariate Cox
  effect, it uses censored patients (a Spearman correlation with time among
  events would drop them), and it costs one sort plus cumulative sums for all
  genes at once.  Subtype uses the ANOVA F-test;
* every other wide group (:data:`SCREENED_GROUPS`: slide tile/region extremum
  features, nucleus features, radiomics) screened the same way, each group
  on its own, at most ``max_per_group`` kept per group;
* every other numeric column (clinical, ``has_*``) kept.

LightGBM handles missing modalities natively (NaN goes down a learned
branch), so no imputation is needed.  Subtype uses the multiclass objective;
survival uses the Breslow Cox partial likelihood as a custom objective
(:mod:`mmray.models.lgbm_cox`), so ``predict`` returns log-risk scores that
:class:`mmray.train.metrics.BreslowSurvival` turns into survival curves.

Importances (gain) are traced back to slide locations with
:func:`trace_importances`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd

from mmray.errors import DataError, UnknownNameError
from mmray.features.selection import CorrelationFilter
from mmray.models.lgbm_cox import cindex_eval, cox_objective, encode_label

HEEC_TASKS = ("survival_cox", "subtype")
GENOMIC_PREFIXES = ("expression__", "mutations__", "cnv__")
# Wide groups screened one by one on the training rows (each keeps at most ``max_per_group``): tile and
# region extremum features, nucleus morphometry/graph aggregates, radiomics, CT crop embeddings.
SCREENED_GROUPS = ("wsi_patient__", "wsi_nuclei_patient__", "radiomics__", "ct_embedding__")
_SKIP_SUFFIXES = ("__event_time", "__bag_ids")


class HEEC:
    """LightGBM on slide extremum features + screened genomics.

    ``fit(X, time_days=, event=)`` (survival) or ``fit(X, y=)`` (subtype, ``y``
    class indices ``0..n_classes-1``); ``X`` a DataFrame of the training rows.
    ``predict(X)`` gives ``[n]`` log-risk or ``[n, C]`` class probabilities.
    """

    def __init__(self, *, task: str = "survival_cox", n_classes: int | None = None,
                 genomic_prefixes: Sequence[str] = GENOMIC_PREFIXES, screen_alpha: float = 0.05,
                 max_genomic: int | None = 200, screened_groups: Sequence[str] = SCREENED_GROUPS,
                 max_per_group: int | None = 64, n_estimators: int = 300,
                 learning_rate: float = 0.03, num_leaves: int = 7, min_child_samples: int = 10,
                 feature_fraction: float = 0.5, bagging_fraction: float = 0.8, lambda_l2: float = 1.0,
                 early_stopping_rounds: int = 30, seed: int = 0, num_threads: int = 0):
        if task not in HEEC_TASKS:
            raise UnknownNameError("HEEC task", task, HEEC_TASKS)
        if task == "subtype" and (n_classes is None or n_classes < 2):
            raise DataError("HEEC subtype needs n_classes >= 2")
        self.task, self.n_classes = task, n_classes
        self.genomic_prefixes = tuple(genomic_prefixes)
        method = "cox" if task == "survival_cox" else "anova"
        self.screen = CorrelationFilter(method, max_p=screen_alpha, top_k=max_genomic)
        self.screened_groups = tuple(screened_groups)
        self.group_screen = {g: CorrelationFilter(method, max_p=screen_alpha, top_k=max_per_group)
                             for g in self.screened_groups}
        self.n_estimators, self.early_stopping_rounds = n_estimators, early_stopping_rounds
        self.params = {
            "learning_rate": learning_rate, "num_leaves": num_leaves, "min_child_samples": min_child_samples,
            "feature_fraction": feature_fraction, "bagging_fraction": bagging_fraction, "bagging_freq": 1,
            "lambda_l2": lambda_l2, "seed": seed, "deterministic": True, "num_threads": num_threads,
            "verbosity": -1, "force_col_wise": True,
        }
        if task == "subtype":
            self.params.update(objective="multiclass", num_class=n_classes, metric="multi_logloss")
        else:
            self.params.update(objective=cox_objective, metric="None")

    # ------------------------------------------------------------ columns
    def _numeric(self, X: pd.DataFrame, *, fitting: bool) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise DataError(f"HEEC wants a pandas DataFrame of features, got {type(X).__name__}")
        if fitting:
            cols = [c for c in X.columns if not str(c).endswith(_SKIP_SUFFIXES) and c not in ("patient_id",)]
            self.categories_ = {c: pd.Categorical(X[c].dropna().astype(str)).categories
                                for c in cols if X[c].dtype == object or isinstance(X[c].dtype, pd.CategoricalDtype)}
            self.input_columns_ = cols
        missing = [c for c in self.input_columns_ if c not in X.columns]
        if missing:
            raise DataError(f"HEEC: {len(missing)} column(s) seen in training are missing, e.g. {missing[:5]}")
        out = {}
        for c in self.input_columns_:
            if c in self.categories_:  # categories fixed at fit: codes, NaN for unseen
                codes = pd.Categorical(X[c].astype("string").astype(object), categories=self.categories_[c]).codes
                out[c] = np.where(codes < 0, np.nan, codes).astype(float)
            else:
                out[c] = pd.to_numeric(X[c], errors="coerce").astype(float).to_numpy()
        return pd.DataFrame(out, index=X.index)

    def _is_genomic(self, c: str) -> bool:
        return str(c).startswith(self.genomic_prefixes)

    # ---------------------------------------------------------------- fit
    def screen_columns(self, X: pd.DataFrame, *, time_days=None, event=None, y=None) -> list[str]:
        """Fit the column encoding and the genomics screen on training rows; returns the kept columns.

        The first half of :meth:`fit`; a distributed trainer (Ray's LightGBM
        trainer) calls it, then trains on :meth:`encode` of each split with
        :meth:`label` as the label column and ``self.params``, and sets
        ``booster_`` to the result.
        """
        Xn = self._numeric(X, fitting=True)
        self._label(len(Xn), time_days, event, y)  # validate before screening
        genomic = [c for c in Xn.columns if self._is_genomic(c)]
        kept_gen: set[str] = set()
        self.genomic_p_values_ = pd.Series([], dtype=float)
        if genomic:
            target = (np.asarray(time_days, float), np.asarray(event, bool)) if self.task == "survival_cox" else y
            self.screen.fit(Xn[genomic], target)
            kept_gen = set(self.screen.get_feature_names_out())
            self.genomic_p_values_ = pd.Series(self.screen.p_values_, index=genomic, dtype=float)
        self.group_p_values_: dict[str, pd.Series] = {}
        target = (np.asarray(time_days, float), np.asarray(event, bool)) if self.task == "survival_cox" else y
        screened: set[str] = set()
        for g, screen in self.group_screen.items():
            cols = [c for c in Xn.columns if str(c).startswith(g) and not self._is_genomic(c)]
            if not cols:
                continue
            screened.update(cols)
            screen.fit(Xn[cols], target)
            kept_gen.update(screen.get_feature_names_out())
            self.group_p_values_[g.rstrip("_")] = pd.Series(screen.p_values_, index=cols, dtype=float)
        self.features_ = [c for c in Xn.columns if not (self._is_genomic(c) or c in screened) or c in kept_gen]
        if not self.features_:
            raise DataError("HEEC: no feature columns left to train on")
        return list(self.features_)

    def encode(self, X: pd.DataFrame) -> pd.DataFrame:
        """The kept columns of ``X`` as floats (categories as codes, NaN kept), in training order."""
        return self._numeric(X, fitting=False)[self.features_]

    def label(self, *, time_days=None, event=None, y=None) -> np.ndarray:
        """``[n]`` LightGBM label: signed survival time (:func:`encode_label`) or class index."""
        n = len(time_days) if time_days is not None else len(y)
        return self._label(n, time_days, event, y)

    def fit(self, X: pd.DataFrame, *, time_days=None, event=None, y=None,
            X_val: pd.DataFrame | None = None, time_days_val=None, event_val=None, y_val=None) -> HEEC:
        """Screen genomics and boost, on training rows only; optional validation set for early stopping."""
        self.screen_columns(X, time_days=time_days, event=event, y=y)
        train = lgb.Dataset(self.encode(X).to_numpy(), label=self.label(time_days=time_days, event=event, y=y),
                            feature_name=self._lgb_names(), free_raw_data=False)
        valid, callbacks, feval = [], [], None
        if X_val is not None:
            valid = [lgb.Dataset(self.encode(X_val).to_numpy(),
                                 label=self.label(time_days=time_days_val, event=event_val, y=y_val),
                                 reference=train)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
            feval = cindex_eval if self.task == "survival_cox" else None
        self.booster_ = lgb.train(self.params, train, num_boost_round=self.n_estimators, valid_sets=valid,
                                  feval=feval, callbacks=callbacks)
        return self

    def _label(self, n: int, time_days, event, y) -> np.ndarray:
        if self.task == "survival_cox":
            if time_days is None or event is None:
                raise DataError("HEEC survival needs time_days and event")
            lab = encode_label(time_days, event)
            if not (lab > 0).any():
                raise DataError("HEEC survival: no events among the training rows")
        else:
            if y is None:
                raise DataError("HEEC subtype needs y (class indices)")
            lab = np.asarray(y, float)
            if lab.min() < 0 or lab.max() >= self.n_classes or np.any(lab != np.round(lab)):
                raise DataError(f"HEEC subtype: y must be class indices 0..{self.n_classes - 1}")
        if lab.shape != (n,):
            raise DataError(f"labels have shape {lab.shape}, features have {n} rows")
        return lab

    def _lgb_names(self) -> list[str]:
        return [re.sub(r"[^0-9A-Za-z_]", "_", str(c)) for c in self.features_]

    # ------------------------------------------------------------ predict
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """``[n]`` log-risk (survival_cox) or ``[n, C]`` class probabilities (subtype)."""
        out = self.booster_.predict(self.encode(X).to_numpy(), num_iteration=self.booster_.best_iteration or None)
        return np.asarray(out, float)

    def feature_importance(self, kind: str = "gain") -> pd.Series:
        """Importance per kept feature (original column names), largest first."""
        imp = self.booster_.feature_importance(importance_type=kind)
        return pd.Series(imp, index=self.features_, dtype=float).sort_values(ascending=False, kind="stable")


# ----------------------------------------------------------------- tracing
_LOCATED = re.compile(r"^(tile|region)_(max|min)_(\d+)$")
_NUCLEI_GROUP = "wsi_nuclei_patient"


def default_feature_of(column: str) -> str | None:
    """Model column -> the slide feature name used in the coordinates table, or None.

    ``wsi_patient__tile_max_17`` -> ``tile_max_17``;
    ``wsi_nuclei_patient__density_per_mm2_max`` -> ``nuclei_density_per_mm2_max`` (the tile with the
    densest nuclei; :func:`mmray.features.nuclei_aggregate.located_features`); means and non-slide
    columns have no single location and give None.
    """
    group, _, name = str(column).rpartition("__")
    if group == _NUCLEI_GROUP:  # wsi_nuclei_patient__density_per_mm2_max -> nuclei_density_per_mm2_max
        return f"nuclei_{name}" if name.endswith(("_max", "_min")) else None
    return name if _LOCATED.match(name) else None


def trace_importances(importance: pd.Series, coords: pd.DataFrame, *, top_k: int = 20,
                      feature_of: Callable[[str], str | None] = default_feature_of) -> pd.DataFrame:
    """Slide locations behind the ``top_k`` most important located features.

    ``importance``: column -> gain (``HEEC.feature_importance()``).
    ``coords``: one row per (slide, extremum feature) with columns
    ``slide_id, feature, x, y`` (the tile/region that gave the max/min; more
    columns such as ``patient_id`` are kept).  ``feature_of`` maps a model
    column to ``coords.feature`` (None: not traceable).  Returns
    ``slide_id, x, y, importance, feature, column`` sorted by importance.
    """
    need = {"slide_id", "feature", "x", "y"}
    if not need <= set(coords.columns):
        raise DataError(f"coords needs columns {sorted(need)}, got {list(coords.columns)}")
    located = [(c, feature_of(c), float(v)) for c, v in importance.items()]
    located = [(c, f, v) for c, f, v in located if f is not None and v > 0]
    located.sort(key=lambda r: -r[2])
    top = pd.DataFrame(located[:top_k], columns=["column", "feature", "importance"])
    out = coords.merge(top, on="feature", how="inner")
    first = ["slide_id", "x", "y", "importance", "feature", "column"]
    out = out[first + [c for c in out.columns if c not in first]]
    return out.sort_values(["importance", "slide_id"], ascending=[False, True], kind="stable").reset_index(drop=True)
