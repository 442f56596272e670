"""Classical survival families on one fold: fold-fitted preprocessing -> feature matrix -> scikit-survival model.

:class:`ClassicPipeline` is what a fold fits and what serving loads: the
same :class:`~mmray.train.preprocess.Preprocessor` the neural models use
(median imputation, variance top-k and Cox-score screening per modality,
scaling; fitted on the training rows that have each modality), its
per-modality matrices side by side plus one presence column per modality
(a missing modality is all zeros after scaling, i.e. the training mean,
and its indicator says so), then a :mod:`mmray.models.survival_classic`
model.  It reads raw training-table rows (``clinical__age``,
``has_expression``, ...), so it packages for serving like a tuned model.

:func:`fit_fold_classic` fits it on the whole training fold (fit + val rows:
these models need no early stopping; ``coxnet`` picks its penalty by an
inner CV on those rows) and scores the test fold with the model's own
survival curves (Uno C, td-AUC and IBS as for the other models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.models.batch import BAG
from mmray.train.evaluate import score_survival
from mmray.train.fold_fit import FoldOutcome, FoldRows, FoldSettings, _predictions, _screen_kwargs
from mmray.train.preprocess import ModalityLayout, Preprocessor


def labels_of(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return rows["time_days"].to_numpy(float), rows["event"].astype(bool).to_numpy()


class ClassicPipeline:
    """Preprocessor + classical survival model over raw training-table rows (module doc)."""

    def __init__(self, family: str, *, modalities: Sequence[str], hparams: Mapping | None = None,
                 top_k_var: Mapping[str, int] | None = None, screen: Mapping[str, Mapping] | None = None,
                 seed: int = 0, layout: ModalityLayout | None = None, pca: Mapping[str, int] | None = None):
        from mmray.models.registry import get_spec

        spec = get_spec(family)
        if spec.framework != "sksurv" or family == "ensemble":
            raise DataError(f"{family!r} is not a classical survival family; use coxnet, coxph_ridge, rsf or gbsa")
        if BAG in modalities:
            raise DataError(f"{family} reads patient-level features (modality 'slide'), not tile bags")
        self.family, self.modalities = family, tuple(modalities)
        self.hparams = dict(hparams or {})
        if "seed" in spec.extra:
            self.hparams.setdefault("seed", seed)
        self.pre = Preprocessor(layout, task="survival_cox", modalities=self.modalities,
                                top_k_var={m: k for m, k in (top_k_var or {}).items() if m in self.modalities},
                                screen={m: _screen_kwargs(v) for m, v in (screen or {}).items()
                                        if m in self.modalities},
                                pca={m: k for m, k in (pca or {}).items() if m in self.modalities})

    @classmethod
    def from_settings(cls, family: str, *, modalities, hparams, settings: FoldSettings, seed: int,
                      layout: ModalityLayout | None = None) -> ClassicPipeline:
        return cls(family, modalities=modalities, hparams=hparams, top_k_var=settings.top_k_var,
                   screen=settings.screen, seed=seed, layout=layout, pca=getattr(settings, "pca", None))

    def matrix(self, rows: pd.DataFrame) -> np.ndarray:
        """``[n, sum d_m + M]``: scaled features of every modality (zeros where absent) and presence flags."""
        p = self.pre.transform(rows)
        return np.column_stack([p.features[m] for m in p.modalities] + [p.mask.astype(float)]).astype(float)

    def fit(self, rows: pd.DataFrame) -> ClassicPipeline:
        from mmray.models.registry import build_model

        self.pre.fit(rows)
        t, e = labels_of(rows)
        self.model_ = build_model(self.family, task="survival_cox", modality_dims={}, n_out=1, **self.hparams)
        self.model_.fit(self.matrix(rows), time_days=t, event=e)
        return self

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        """``[n]`` risk (higher = earlier event)."""
        return self.model_.predict(self.matrix(rows))

    def survival(self, rows: pd.DataFrame, times_days) -> np.ndarray:
        """``[n, T]`` survival probabilities from the model's own survival functions."""
        return self.model_.survival(self.matrix(rows), times_days)

    @property
    def preprocessors(self) -> list[Preprocessor]:
        return [self.pre]


def score_fitted(model, rows: FoldRows, fold: int) -> FoldOutcome:
    """Test-fold metrics and predictions of a fitted pipeline / ensemble (``predict``, ``survival`` on rows)."""
    test, train = rows.test, rows.train
    risk = model.predict(test)
    t, e = labels_of(test)
    tt, te = labels_of(train)
    score = score_survival("survival_cox", risk, time_days=t, event=e, train_output=None, train_time_days=tt,
                           train_event=te, surv_fn=lambda ts: model.survival(test, ts))
    preds = _predictions("survival_cox", test["patient_id"].astype(str), risk, test, fold)
    info = {"n_fit": len(train), "n_val": 0, "n_test": len(test)}
    return FoldOutcome(score.metrics, preds, info, notes=score.notes)


def fit_fold_classic(*, model: str, hparams: Mapping, task: str, modalities: Sequence[str], rows: FoldRows,
                     fold: int, settings: FoldSettings, layout: ModalityLayout | None = None) -> FoldOutcome:
    """One classical family on one fold (module doc)."""
    if task != "survival_cox":
        raise DataError(f"{model} is a survival model (task survival_cox), not {task!r}")
    pipe = ClassicPipeline.from_settings(model, modalities=modalities, hparams=hparams, settings=settings,
                                         seed=settings.seed + 1000 * fold, layout=layout).fit(rows.train)
    out = score_fitted(pipe, rows, fold)
    out.info["n_features"] = int(pipe.matrix(rows.test.iloc[:1]).shape[1])
    if model == "coxnet":
        out.info["alpha"] = float(pipe.model_.alpha_)
        out.info["n_nonzero"] = int(np.count_nonzero(pipe.model_.coef_))
    return out
