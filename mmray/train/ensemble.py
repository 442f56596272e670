"""``ensemble``: nested stacking (or a rank average) of classical survival members over raw training rows.

Members are :class:`~mmray.train.fold_classic.ClassicPipeline` s, written
``family`` (on the ensemble's modality set) or ``family@mod1+mod2`` (on
those modalities only).  The default for a set of M modalities is every
classical family on the whole set plus ``coxnet`` on each modality alone
(the stack then also weighs modalities, as late fusion does).

``method: stack`` (nested, leak-free): the rows given to :meth:`fit` (the
outer training fold) are split into ``inner_folds`` patient folds; each
member is fitted on the other inner folds and predicts the held-out one,
giving out-of-fold risks for every training row.  A ridge Cox
meta-learner is fitted on those out-of-fold risks with the training labels
only; every member is then refitted on all training rows, and a new row's
risk is the meta-learner over the members' risks.  Nothing of the outer
test fold (features or labels) is used to fit anything.

``method: rank``: each member's risk is turned into its percentile among
that member's risks on the training rows, and the percentiles are averaged
(no labels beyond the members' own fits).

Member risks live on different scales (a Cox linear predictor, a forest's
summed hazard), so each is standardised by the mean and sd of the same
fitted member's risks on the rows it was fitted on, the same way inside the
inner loop and outside it.  Survival curves: the meta-learner's Breslow
baseline (stack) or a one-covariate Cox fit on the training rows' averaged
percentiles (rank).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.models.survival_classic import CLASSIC_FAMILIES, curves_at, survival_labels
from mmray.train.fold_classic import ClassicPipeline, labels_of
from mmray.train.folds import make_folds, split
from mmray.train.preprocess import ModalityLayout

METHODS = ("stack", "rank")


def parse_member(text: str, modalities: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``"rsf"`` -> ``("rsf", modalities)``; ``"coxnet@clinical+expression"`` -> ``("coxnet", (...))``."""
    family, _, mods = str(text).partition("@")
    if family not in CLASSIC_FAMILIES:
        raise DataError(f"ensemble member {text!r}: unknown family {family!r}; valid: {sorted(CLASSIC_FAMILIES)}")
    sub = tuple(m for m in mods.split("+") if m) if mods else tuple(modalities)
    bad = [m for m in sub if m not in modalities]
    if bad:
        raise DataError(f"ensemble member {text!r}: modalities {bad} are not in the ensemble's set {list(modalities)}")
    return family, sub


def default_members(modalities: Sequence[str]) -> list[str]:
    members = list(CLASSIC_FAMILIES)
    if len(modalities) > 1:
        members += [f"coxnet@{m}" for m in modalities]
    return members


class _Member:
    """One fitted member pipeline and the standardisation of its risks (fitted on its own training rows)."""

    def __init__(self, pipe: ClassicPipeline, rows: pd.DataFrame):
        self.pipe = pipe.fit(rows)
        r = self.pipe.predict(rows)
        self.mean, self.sd = float(r.mean()), float(r.std()) or 1.0
        self.train_sorted = np.sort(r)

    def z(self, rows: pd.DataFrame) -> np.ndarray:
        return (self.pipe.predict(rows) - self.mean) / self.sd

    def percentile(self, rows: pd.DataFrame) -> np.ndarray:
        r = self.pipe.predict(rows)
        lo = np.searchsorted(self.train_sorted, r, side="left")
        hi = np.searchsorted(self.train_sorted, r, side="right")
        return (lo + hi) / (2.0 * len(self.train_sorted))


class StackedEnsemble:
    """Nested stacking / rank average of classical members (module doc); ``fit(rows)``, ``predict(rows)``."""

    def __init__(self, *, modalities: Sequence[str] = (), members: Sequence[str] | None = None,
                 method: str = "stack", meta_alpha: float = 1.0, inner_folds: int = 3,
                 member_hparams: Mapping[str, Mapping] | None = None, seed: int = 0,
                 top_k_var: Mapping[str, int] | None = None, screen: Mapping[str, Mapping] | None = None,
                 layout: ModalityLayout | None = None, pca: Mapping[str, int] | None = None):
        if method not in METHODS:
            raise DataError(f"ensemble method {method!r}: valid {list(METHODS)}")
        if inner_folds < 2:
            raise DataError(f"ensemble inner_folds must be >= 2, got {inner_folds}")
        self.modalities = tuple(modalities)
        self.members = list(members) if members else default_members(self.modalities)
        self.parsed = [parse_member(m, self.modalities) for m in self.members]
        self.method, self.meta_alpha, self.inner_folds, self.seed = method, float(meta_alpha), int(inner_folds), seed
        self.member_hparams = {k: dict(v) for k, v in (member_hparams or {}).items()}
        self.top_k_var, self.screen, self.layout = dict(top_k_var or {}), dict(screen or {}), layout
        self.pca = dict(pca or {})

    def _pipeline(self, j: int, seed: int) -> ClassicPipeline:
        family, mods = self.parsed[j]
        return ClassicPipeline(family, modalities=mods, hparams=self.member_hparams.get(family, {}),
                               top_k_var=self.top_k_var, screen=self.screen, seed=seed, layout=self.layout,
                               pca=getattr(self, "pca", None))

    def _fit_members(self, rows: pd.DataFrame, seed: int) -> list[_Member]:
        return [_Member(self._pipeline(j, seed), rows) for j in range(len(self.parsed))]

    def out_of_fold(self, rows: pd.DataFrame) -> np.ndarray:
        """``[n, J]`` standardised member risks of ``rows``, each predicted by members fitted without its fold."""
        rows = rows.reset_index(drop=True)
        inner = make_folds(rows.assign(event=rows["event"].astype(bool)), n_folds=self.inner_folds,
                           seed=self.seed + 17, site_col=None)
        oof = np.full((len(rows), len(self.parsed)), np.nan)
        for k in range(self.inner_folds):
            tr, va = split(rows, inner, fold=k)
            members = self._fit_members(rows.iloc[tr], self.seed + 31 * (k + 1))
            oof[va] = np.column_stack([m.z(rows.iloc[va]) for m in members])
        return oof

    def fit(self, rows: pd.DataFrame) -> StackedEnsemble:
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        t, e = labels_of(rows)
        y = survival_labels(t, e)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.method == "stack":
                self.oof_ = self.out_of_fold(rows)
                self.meta_ = CoxPHSurvivalAnalysis(alpha=self.meta_alpha).fit(self.oof_, y)
            self.fitted_ = self._fit_members(rows, self.seed)
            if self.method == "rank":
                score = self._rank_score(rows)
                self.meta_ = CoxPHSurvivalAnalysis(alpha=1e-3).fit(score[:, None], y)
        return self

    def _rank_score(self, rows: pd.DataFrame) -> np.ndarray:
        return np.mean([m.percentile(rows) for m in self.fitted_], axis=0)

    def member_risks(self, rows: pd.DataFrame) -> np.ndarray:
        """``[n, J]`` standardised risks of the refitted members."""
        return np.column_stack([m.z(rows) for m in self.fitted_])

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        """``[n]`` risk: the meta-learner's linear predictor (stack) or the mean member percentile (rank)."""
        if self.method == "stack":
            return np.asarray(self.meta_.predict(self.member_risks(rows)), float)
        return self._rank_score(rows)

    def survival(self, rows: pd.DataFrame, times_days) -> np.ndarray:
        x = self.member_risks(rows) if self.method == "stack" else self._rank_score(rows)[:, None]
        return curves_at(self.meta_.predict_survival_function(x), times_days)

    @property
    def weights(self) -> dict[str, float]:
        """Meta-learner coefficient per member (stack) or equal weights (rank)."""
        coef = self.meta_.coef_ if self.method == "stack" else np.full(len(self.members), 1.0 / len(self.members))
        return {m: float(c) for m, c in zip(self.members, coef)}

    @property
    def preprocessors(self) -> list:
        return [m.pipe.pre for m in self.fitted_]


def fit_fold_ensemble(*, hparams: Mapping, task: str, modalities: Sequence[str], rows, fold: int, settings,
                      layout: ModalityLayout | None = None):
    """The ensemble on one fold: fitted on the training fold only (nested), scored on the test fold."""
    from mmray.train.fold_classic import score_fitted

    if task != "survival_cox":
        raise DataError(f"ensemble is a survival model (task survival_cox), not {task!r}")
    hp = {"seed": settings.seed + 1000 * fold, **dict(hparams)}
    ens = StackedEnsemble(modalities=modalities, top_k_var=settings.top_k_var, screen=settings.screen, layout=layout,
                          pca=settings.pca, **hp).fit(rows.train)
    out = score_fitted(ens, rows, fold)
    out.info["n_members"] = len(ens.members)
    out.notes.append("weights " + ", ".join(f"{k}={v:.2f}" for k, v in ens.weights.items()))
    return out
