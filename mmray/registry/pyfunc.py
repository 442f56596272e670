"""MLflow pyfunc wrapper of a fitted survival estimator.

``SurvivalPyfunc`` wraps any fitted scikit-learn / scikit-survival estimator
(usually a ``Pipeline`` ending in a Cox model) with the names of its input
features and a fixed grid of times. ``predict(DataFrame)`` returns one row per
patient: ``risk`` (higher means earlier event) and, when the estimator has
``predict_survival_function``, ``surv_<t>d`` = P(survival beyond t days) at
each grid time (for a proportional-hazards model given ``reference_x``, from
one cached reference curve: ``S_ref(t) ** exp(risk - risk_ref)``, checked
against the estimator at construction). The MLflow model signature stores the input feature names and
the output columns.

Serving calls :meth:`SurvivalPyfunc.predict_arrays` on the unwrapped model
(the same code path, without pandas), so HTTP answers equal ``predict``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Any

import cloudpickle
import mlflow.pyfunc
import numpy as np
import pandas as pd

from mmray.errors import DataError, RegistryError

ARTIFACT_PATH = "model"
# Written into the model's requirements instead of letting MLflow infer them
# (inference imports the model in a subprocess: seconds per model).
PIP_REQUIREMENTS = ("mlflow", "scikit-learn", "scikit-survival", "numpy", "pandas")
MAX_AFFINE_FEATURES = 2000  # the affine probe predicts F + 1 rows of F features


class SurvivalPyfunc(mlflow.pyfunc.PythonModel):
    """A fitted estimator + feature names + survival grid, as an MLflow pyfunc model."""

    pip_requirements: tuple[str, ...] = PIP_REQUIREMENTS  # what the model's code imports (subclasses add)

    def __init__(self, estimator: Any, *, features: list[str], times_days=(), info: dict | None = None,
                 reference_x: np.ndarray | None = None):
        if not hasattr(estimator, "predict"):
            raise DataError(f"estimator {type(estimator).__name__} has no predict(); pass a fitted model")
        self.estimator = estimator
        self.features = [str(f) for f in features]
        self.times_days = np.asarray(times_days, dtype=float).reshape(-1)
        self.info = dict(info or {})
        self._ph = None  # (risk of the reference row, log survival of it at times_days)
        self._affine = None  # (intercept, weights [F]) when risk(x) = intercept + x @ weights
        if reference_x is not None:
            reference_x = np.asarray(reference_x, dtype=float)
            self._affine = self._affine_risk(reference_x)
            if self.has_survival:
                self._ph = self._proportional_hazards(reference_x)

    def _affine_risk(self, x: np.ndarray):
        """``(b, w)`` with ``estimator.predict(x) == b + x @ w`` when the estimator is affine in finite inputs.

        True of the signature models (imputer -> scaler -> Cox linear predictor);
        serving then skips the pipeline's per-call validation (most of a
        one-patient prediction). Read off by probing the unit vectors from the
        rows' median, then checked on the rows of ``x`` and on random rows
        around them to 1e-9 (relative); None otherwise or beyond
        :data:`MAX_AFFINE_FEATURES` features.
        """
        if x.ndim != 2 or x.shape[0] < 2 or not 0 < x.shape[1] <= MAX_AFFINE_FEATURES or not np.isfinite(x).all():
            return None
        try:
            center = np.median(x, axis=0)
            probe = np.vstack([center, center + np.eye(x.shape[1])])
            out = np.asarray(self.estimator.predict(probe), dtype=float).reshape(-1)
            b0, w = out[0], out[1:] - out[0]
            b = b0 - center @ w
            rng = np.random.default_rng(0)
            check = np.vstack([x, x[rng.integers(0, len(x), 16)] + rng.normal(0, x.std(axis=0) + 1, (16, x.shape[1]))])
            want = np.asarray(self.estimator.predict(check), dtype=float).reshape(-1)
        except Exception:  # noqa: BLE001 (an estimator that cannot take these rows: keep its own path)
            return None
        got = b + check @ w
        ok = np.allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(want).max())))
        return (float(b), w) if ok else None

    def _proportional_hazards(self, x: np.ndarray):
        """Reference curve for ``S(t|x) = S_ref(t) ** exp(risk(x) - risk_ref)`` when it holds.

        True of Cox models (risk = linear predictor, Breslow baseline). Checked
        on the rows of ``x`` (e.g. training rows, [m, F]) against the
        estimator's own survival functions; when it does not hold to 1e-9,
        predictions keep calling ``predict_survival_function`` (slower).
        """
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] != len(self.features):
            return None
        ref = np.median(x, axis=0, keepdims=True)
        risk_ref = float(self.estimator.predict(ref)[0])
        s_ref = self.estimator.predict_survival_function(ref)[0](self.times_days)
        if not np.all(s_ref > 0):
            return None
        ph = (risk_ref, np.log(s_ref))
        want = np.vstack([fn(self.times_days) for fn in self.estimator.predict_survival_function(x)])
        got = self._ph_survival(np.asarray(self.estimator.predict(x), dtype=float), ph)
        return ph if np.allclose(got, want, rtol=0, atol=1e-9) else None

    @staticmethod
    def _ph_survival(risk: np.ndarray, ph) -> np.ndarray:
        risk_ref, log_s_ref = ph
        return np.exp(np.exp(risk - risk_ref)[:, None] * log_s_ref[None, :])

    @property
    def has_survival(self) -> bool:
        return self.times_days.size > 0 and hasattr(self.estimator, "predict_survival_function")

    def input_types(self) -> list[str]:
        """MLflow type of each feature column in the model signature."""
        return ["double"] * len(self.features)

    def output_columns(self) -> list[str]:
        cols = ["risk"]
        if self.has_survival:
            cols += [f"surv_{t:g}d" for t in self.times_days]
        return cols

    def predict_arrays(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``x`` [n, F] in feature order -> ``(risk [n], survival [n, T] or None)``."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise DataError(f"expected an array [n, {len(self.features)}] in feature order, got shape {x.shape}")
        affine = getattr(self, "_affine", None)  # models pickled before it existed lack the attribute
        if affine is not None and np.isfinite(x).all():
            risk = affine[0] + x @ affine[1]
        else:
            risk = np.asarray(self.estimator.predict(x), dtype=float).reshape(-1)
        if not self.has_survival:
            return risk, None
        if getattr(self, "_ph", None) is not None:
            return risk, self._ph_survival(risk, self._ph)
        fns = self.estimator.predict_survival_function(x)
        surv = np.vstack([fn(self.times_days) for fn in fns]) if len(fns) else np.empty((0, self.times_days.size))
        return risk, surv

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise DataError(f"input lacks {len(missing)} feature column(s): {missing[:10]}; the model needs "
                            f"{len(self.features)} columns named as in its signature")
        risk, surv = self.predict_arrays(frame[self.features].to_numpy(dtype=float))
        out = pd.DataFrame({"risk": risk}, index=frame.index)
        if surv is not None:
            for j, t in enumerate(self.times_days):
                out[f"surv_{t:g}d"] = surv[:, j]
        return out


def model_signature(model: SurvivalPyfunc):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(t, f) for t, f in zip(model.input_types(), model.features)]),
                          outputs=Schema([ColSpec("double", c) for c in model.output_columns()]))


def log_pyfunc(client, run_id: str, model: SurvivalPyfunc) -> str:
    """Save ``model`` as a pyfunc model in run ``run_id``'s artifacts; returns its ``runs:/`` URI."""
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the per-model "python_model is cloudpickled" warning: we know
    with tempfile.TemporaryDirectory(prefix="mmray-model-") as tmp:
        path = os.path.join(tmp, ARTIFACT_PATH)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no input example": deliberately none (it would be patient data)
                mlflow.pyfunc.save_model(path, python_model=model, signature=model_signature(model),
                                         pip_requirements=list(model.pip_requirements))
            client.log_artifacts(run_id, path, ARTIFACT_PATH)
        except Exception as e:  # MLflow raises many types (MlflowException, OSError, pickling)
            raise RegistryError(f"cannot log the model of run {run_id}: {e}; check the artifact "
                                f"store of the tracking server is writable") from e
        finally:
            quiet.setLevel(level)
    return f"runs:/{run_id}/{ARTIFACT_PATH}"


def load_pyfunc(model_uri: str, *, suppress_warnings: bool = False) -> SurvivalPyfunc:
    """Load a logged model (``models:/name@alias``, ``runs:/...``, a local folder) and unwrap it.

    Uses the process's MLflow tracking/registry URI (``mlflow.set_tracking_uri``).
    ``suppress_warnings`` skips MLflow's check of the model's pip requirements
    against the installed packages (a serving replica checks once per version).
    """
    loaded = mlflow.pyfunc.load_model(model_uri, suppress_warnings=suppress_warnings)
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, SurvivalPyfunc):
        raise RegistryError(f"{model_uri} is a {type(inner).__name__}, not an mmray SurvivalPyfunc model; "
                            f"serve only models registered by mmray")
    return inner


def fast_reload_path(folder: str) -> str | None:
    """The cloudpickle file of a local pyfunc model folder, when reloading it needs nothing else.

    True of the models :func:`log_pyfunc` writes: no code paths, artifacts or
    compression, pickled by this cloudpickle version. Then
    :func:`reload_pyfunc` on it equals ``load_pyfunc(folder)`` at a fraction
    of the cost (no MLmodel YAML parse, no flavor dispatch). None: use
    :func:`load_pyfunc`.
    """
    from mlflow.models import Model

    conf = Model.load(folder).flavors.get(mlflow.pyfunc.FLAVOR_NAME, {})
    plain = (conf.get("python_model") and not conf.get("code") and not conf.get("artifacts")
             and not conf.get("model_code_path") and not conf.get("python_model_compression")
             and conf.get("cloudpickle_version") == cloudpickle.__version__)
    return os.path.join(folder, conf["python_model"]) if plain else None


def reload_pyfunc(pickle_path: str) -> SurvivalPyfunc:
    """Unpickle a model :func:`load_pyfunc` already loaded once from the same local folder."""
    with open(pickle_path, "rb") as f:
        inner = cloudpickle.load(f)
    if not isinstance(inner, SurvivalPyfunc):
        raise RegistryError(f"{pickle_path} holds a {type(inner).__name__}, not an mmray SurvivalPyfunc model")
    inner.load_context(mlflow.pyfunc.PythonModelContext(artifacts={}, model_config=None))  # as MLflow does
    return inner
