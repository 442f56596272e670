"""A tuned model as an estimator over raw training-table columns, for :class:`SurvivalPyfunc`.

A Ray Tune run's refitted best model (:func:`mmray.tune.tuner.fit_best`) is
a torch model with its fold-fitted :class:`~mmray.train.preprocess.Preprocessor`,
a HEEC (LightGBM) model that reads the joined table directly, or a classical
survival pipeline / ``ensemble`` (preprocessors + scikit-survival models; its
risk is used as a Cox-type score, with a Breslow baseline for the curves). Both read
the columns of the point-in-time training table (``clinical__age``,
``expression__MKI67``, ``has_expression``, ...). :class:`TunedEstimator`
takes ``x`` ``[n, F]`` in the order of its ``features`` (those names), puts
them in a frame like the training table (every other column the model's
preprocessing reads is NaN: it is imputed and then dropped by the fitted
selection, or it belongs to a modality the model does not use) and returns
what the training code computes on that frame:

* ``predict(x)``: ``[n]`` risk (higher = worse): the Cox log-risk, or minus
  the summed discrete-time survival (:func:`mmray.train.evaluate.risk_of`);
* ``predict_survival_function(x)``: one curve per patient, ``S(t)`` at any
  times in days: a Breslow baseline fitted on the training rows' risks
  (Cox-type outputs, as the cross-validation scores them) or the discrete-time
  hazards and the training time bins.

Missing modalities: a row with ``has_<group>`` 0 (or NaN in a pandas frame)
gets NaN in every column of that group, as the point-in-time join writes a
patient without the group (whatever values were sent there), so it is
masked exactly as in training (torch) or sent down LightGBM's missing-value
branches (HEEC). Only features whose values the fitted model uses are
required, so ``features`` lists what a client must send.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.registry.pyfunc import PIP_REQUIREMENTS, SurvivalPyfunc


@dataclass(frozen=True)
class Columns:
    """``features``: what a caller sends (in order); ``inputs``: every column the model's code reads;
    ``text``: features that are text in the training table (a numeric API cannot carry them)."""

    features: list[str]
    inputs: list[str]
    text: list[str]


def _flags(groups: Sequence[str], table_columns: Sequence[str]) -> list[str]:
    have = set(table_columns)
    return [f"has_{g}" for g in groups if f"has_{g}" in have]


def torch_columns(pre, *, model_modalities: Sequence[str], table_columns: Sequence[str]) -> Columns:
    """Columns of a fitted :class:`Preprocessor` feeding a torch model over ``model_modalities``.

    A raw column is a feature when its encoding (itself, or ``<col>=<level>``
    one-hot columns) survived the block's variance / label selection.
    """
    features, inputs, text = [], [], []
    for m in pre.modalities_:
        block = pre.blocks_[m]
        flags = _flags(pre.layout.groups[m], table_columns)
        inputs += list(block.columns) + flags
        if m not in model_modalities:
            continue
        kept = set(block.feature_names_)
        levels = block.levels_
        used = [c for c in block.columns
                if c in kept or any(f"{c}={lev}" in kept for lev in levels.get(c, ()))]
        features += used + flags
        text += [c for c in used if c in levels]
    return Columns(list(dict.fromkeys(features)), list(dict.fromkeys(inputs)), text)


def heec_model_columns(heec) -> Columns:
    """Columns of a fitted HEEC: it reads ``input_columns_`` and uses the kept ``features_``."""
    text = [c for c in heec.features_ if c in heec.categories_]
    return Columns(list(heec.features_), list(heec.input_columns_), text)


def classic_columns(model, *, table_columns: Sequence[str]) -> Columns:
    """Columns of a fitted classical pipeline or ensemble: the union over its members' preprocessors."""
    parts = [torch_columns(pre, model_modalities=pre.modalities_, table_columns=table_columns)
             for pre in model.preprocessors]
    return Columns(list(dict.fromkeys(c for p in parts for c in p.features)),
                   list(dict.fromkeys(c for p in parts for c in p.inputs)),
                   list(dict.fromkeys(c for p in parts for c in p.text)))


class ClassicPredictor:
    """A classical survival pipeline or ensemble (:mod:`mmray.train.fold_classic`): raw rows -> risk."""

    def __init__(self, model):
        self.model = model

    def outputs(self, frame: pd.DataFrame) -> np.ndarray:
        return self.model.predict(frame)


class TorchPredictor:
    """Fitted preprocessing + torch model weights; the module is rebuilt on first use after unpickling."""

    def __init__(self, *, preprocessor, spec, state_dict: dict):
        import torch

        self.pre, self.spec = preprocessor, spec
        buf = io.BytesIO()
        torch.save(state_dict, buf)
        self.weights = buf.getvalue()
        self._model = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_model"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import torch

            model = self.spec.build()
            model.load_state_dict(torch.load(io.BytesIO(self.weights), map_location="cpu", weights_only=True))
            model.eval()
            self._model = model
        return self._model

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model.modalities)

    def outputs(self, frame: pd.DataFrame) -> np.ndarray:
        from mmray.train.data import prepared_columns
        from mmray.train.ray_torch import predict_columns

        cols = prepared_columns(self.pre.transform(frame))
        return predict_columns(self.model, cols, dims=self.pre.dims, bag_dim=self.spec.bag_dim).output


class HeecPredictor:
    def __init__(self, heec):
        self.heec = heec

    def outputs(self, frame: pd.DataFrame) -> np.ndarray:
        return self.heec.predict(frame)


class SurvivalCurve:
    """One patient's survival function: ``curve(times_days) -> [T]``."""

    def __init__(self, estimator: TunedEstimator, outputs: np.ndarray, row: int):
        self.estimator, self.out, self.row = estimator, outputs, row

    def __call__(self, times_days) -> np.ndarray:
        return self.estimator.survival(self.out[self.row:self.row + 1], times_days)[0]


class TunedEstimator:
    """``predict`` / ``predict_survival_function`` of a tuned model over raw columns (module doc)."""

    def __init__(self, *, task: str, columns: Columns, predictor, baseline=None, bins: dict | None = None):
        if task not in ("survival_cox", "survival_discrete"):
            raise DataError(f"a served tuned model predicts survival risk; task {task!r} is not supported")
        self.task, self.columns, self.predictor = task, columns, predictor
        self.baseline = baseline  # BreslowSurvival (survival_cox)
        self.bins = bins  # TimeBins.to_dict() (survival_discrete)
        flags = [c for c in columns.inputs if c.startswith("has_")]
        self.groups = {f: [c for c in columns.inputs if c.startswith(f[len("has_"):] + "__")] for f in flags}

    @property
    def features(self) -> list[str]:
        return self.columns.features

    def frame(self, x: np.ndarray) -> pd.DataFrame:
        """``x`` [n, F] in feature order -> a training-table-like frame of every input column."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise DataError(f"expected an array [n, {len(self.features)}] in feature order, got shape {x.shape}")
        # Built in numpy and framed once: column-wise pandas assignment over thousands of columns
        # costs seconds per request.
        at = {c: j for j, c in enumerate(self.columns.inputs)}
        values = np.full((x.shape[0], len(at)), np.nan)
        values[:, [at[f] for f in self.features]] = x
        flags = {}
        for flag, cols in self.groups.items():  # bool flags, and NaN values where a group is absent, as joined
            present = np.nan_to_num(values[:, at[flag]], nan=0.0).astype(bool)
            flags[flag] = present
            if not present.all() and cols:
                values[np.ix_(~present, [at[c] for c in cols])] = np.nan
        out = pd.DataFrame(values, columns=self.columns.inputs)
        for flag, present in flags.items():
            out[flag] = present
        return out

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs ``[n]`` (Cox log-risk) or ``[n, K]`` (discrete-time hazard logits)."""
        frame = self.frame(x)
        if not len(frame):
            return np.empty((0,) if self.task == "survival_cox" else (0, len(self.bins["cuts_days"]) + 1))
        return np.asarray(self.predictor.outputs(frame), dtype=float)

    def risk(self, outputs: np.ndarray) -> np.ndarray:
        """``[n]`` risk of :meth:`outputs`."""
        from mmray.train.evaluate import risk_of

        return risk_of(self.task, outputs) if len(outputs) else np.empty(0)

    def survival(self, outputs: np.ndarray, times_days) -> np.ndarray:
        """``[n, T]`` survival probabilities of :meth:`outputs` at ``times_days``."""
        from mmray.train import metrics as M

        times = np.asarray(times_days, dtype=float).reshape(-1)
        if not len(outputs):
            return np.empty((0, times.size))
        if self.task == "survival_cox":
            if self.baseline is None:
                raise DataError("this model was saved without a survival baseline")
            return self.baseline.survival(outputs.reshape(-1), times)
        return M.discrete_survival_at(outputs, bin_cuts_days=self.bins["cuts_days"],
                                      max_time_days=self.bins["max_days"], times_days=times)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.risk(self.outputs(x))

    def predict_survival_function(self, x: np.ndarray) -> list[SurvivalCurve]:
        out = self.outputs(x)
        return [SurvivalCurve(self, out, i) for i in range(len(out))]


def mlflow_type(dtype) -> str:
    """MLflow column type that accepts the training table's values (and safe upcasts of them).

    ``has_<group>`` flags are bool, int64 counts stay long (MLflow refuses
    int64 -> double), every other number is double (float32 and small ints
    upcast to it).
    """
    kind = np.dtype(dtype).kind if not isinstance(dtype, pd.api.extensions.ExtensionDtype) else "O"
    if kind == "b":
        return "boolean"
    if kind in "iu" and np.dtype(dtype).itemsize > 6:
        return "long"
    return "double"


class TunedPyfunc(SurvivalPyfunc):
    """:class:`SurvivalPyfunc` of a :class:`TunedEstimator` (same predict / serving contract).

    ``input_types``: the MLflow type of each feature (:func:`mlflow_type` of
    its training-table column), so ``predict`` takes training-table rows as
    they are (bool flags, integer counts); serving reads JSON numbers.
    """

    pip_requirements = (*PIP_REQUIREMENTS, "torch", "lightgbm")

    def __init__(self, estimator: TunedEstimator, *, features: list[str], times_days=(), info: dict | None = None,
                 input_types: Sequence[str] | None = None):
        super().__init__(estimator, features=features, times_days=times_days, info=info)
        self._input_types = list(input_types) if input_types is not None else ["double"] * len(self.features)
        if len(self._input_types) != len(self.features):
            raise DataError(f"{len(self._input_types)} input types for {len(self.features)} features")

    def input_types(self) -> list[str]:
        return list(self._input_types)

    def predict_arrays(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Like :meth:`SurvivalPyfunc.predict_arrays`, with one model pass for risk and curves."""
        out = self.estimator.outputs(x)
        surv = self.estimator.survival(out, self.times_days) if self.has_survival else None
        return self.estimator.risk(out), surv
