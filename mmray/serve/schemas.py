"""Request and response bodies of the HTTP API, validated by hand (no echo of patient values).

``POST /v1/predict`` body, one of::

    {"model": "sig__X", "instances": [{"MKI67": 1.2, "TOP2A": 0.3, ...}, ...]}
    {"model": "sig__X", "rows": [[1.2, 0.3, ...], ...]}   # in the model's feature order

``model`` may instead come in the ``serve_multiplexed_model_id`` header (the
header routes the request to a replica that has the model loaded). Features
the model does not use are ignored, so a client may send a patient's whole
expression profile to any signature model. Numbers only: ``null``, strings,
booleans, NaN and infinities are refused.

Errors are ``{"error": CODE, "message": TEXT, ...}``; a 422 names the missing
and non-numeric features and the instance indices, never the values.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

MODEL_HEADER = "serve_multiplexed_model_id"
MAX_LISTED = 50  # names listed in an error message
_MAX_INT = int(sys.float_info.max)  # larger JSON integers do not fit a float


@dataclass
class ApiError(Exception):
    """An HTTP error answer: status code and JSON body."""

    status: int
    error: str
    message: str
    extra: dict = field(default_factory=dict)

    def body(self) -> dict:
        return {"error": self.error, "message": self.message, **self.extra}


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
        raise ApiError(422, "invalid_json", f"the request body is not valid JSON ({e.__class__.__name__}); "
                                            f"send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", f"expected a JSON object, got {type(body).__name__}")
    return body


def model_id(header: str | None, body: dict) -> str:
    """The model asked for: header ``serve_multiplexed_model_id`` or body ``model`` (must agree)."""
    from_body = body.get("model")
    if from_body is not None and not isinstance(from_body, str):
        raise ApiError(422, "invalid_model", "'model' must be a string, the registered model name")
    header = (header or "").strip() or None
    if header and from_body and header != from_body:
        raise ApiError(422, "conflicting_model", f"header {MODEL_HEADER} names {header!r} but the body names "
                                                 f"{from_body!r}; send one")
    name = header or from_body
    if not name:
        raise ApiError(422, "missing_model", f"name the model in the {MODEL_HEADER} header or a 'model' field, "
                                             f"e.g. 'sig__SIG_PROLIFERATION'; GET /v1/models lists them")
    if len(name) > 256 or not name.isprintable():
        raise ApiError(404, "unknown_model", "no such model (names are printable, at most 256 characters)")
    return name


def _is_number(v) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, int) and not isinstance(v, bool) and -_MAX_INT <= v <= _MAX_INT


def _listed(names) -> list[str]:
    names = list(names)
    return names[:MAX_LISTED] + ([f"... (+{len(names) - MAX_LISTED} more)"] if len(names) > MAX_LISTED else [])


def parse_inputs(body: dict, features: list[str], *, max_instances: int = 10000) -> np.ndarray:
    """``x`` [n, F] in ``features`` order from ``instances`` or ``rows``; :class:`ApiError` 422 otherwise."""
    has_inst, has_rows = "instances" in body, "rows" in body
    if has_inst == has_rows:
        raise ApiError(422, "invalid_body", "give exactly one of 'instances' (a list of {feature: number} "
                                            "objects) or 'rows' (a list of number lists in the model's "
                                            "feature order, see GET /v1/models)")
    items = body["instances"] if has_inst else body["rows"]
    if not isinstance(items, list) or not items:
        raise ApiError(422, "invalid_body", f"'{'instances' if has_inst else 'rows'}' must be a non-empty list")
    if len(items) > max_instances:
        raise ApiError(422, "too_many_instances", f"{len(items)} instances in one request; the limit is "
                                                  f"{max_instances}: split the request")
    x = np.empty((len(items), len(features)), dtype=float)
    missing: dict[str, list[int]] = {}
    bad: dict[str, list[int]] = {}
    if has_inst:
        for i, inst in enumerate(items):
            if not isinstance(inst, dict):
                raise ApiError(422, "invalid_body", f"instances[{i}] is a {type(inst).__name__}; each instance "
                                                    f"is an object {{feature: number}}")
            for j, f in enumerate(features):
                v = inst.get(f, _ABSENT)
                if v is _ABSENT:
                    missing.setdefault(f, []).append(i)
                elif not _is_number(v):
                    bad.setdefault(f, []).append(i)
                else:
                    x[i, j] = v
    else:
        for i, row in enumerate(items):
            if not isinstance(row, list) or len(row) != len(features):
                got = len(row) if isinstance(row, list) else type(row).__name__
                raise ApiError(422, "invalid_row_length",
                               f"rows[{i}] has {got} values; the model takes {len(features)} in the order of "
                               f"its features (GET /v1/models), or send 'instances' by name",
                               {"expected_length": len(features)})
            for j, v in enumerate(row):
                if not _is_number(v):
                    bad.setdefault(features[j], []).append(i)
                else:
                    x[i, j] = v
    if missing or bad:
        order = {f: j for j, f in enumerate(features)}
        missing = dict(sorted(missing.items(), key=lambda kv: order[kv[0]]))
        bad = dict(sorted(bad.items(), key=lambda kv: order[kv[0]]))
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing feature(s): {', '.join(_listed(missing))}")
        if bad:
            parts.append(f"{len(bad)} non-numeric feature(s) (null, text, boolean, NaN or infinite): "
                         f"{', '.join(_listed(bad))}")
        rows = sorted({i for v in (*missing.values(), *bad.values()) for i in v})
        raise ApiError(422, "invalid_features", "; ".join(parts),
                       {"missing_features": _listed(missing), "non_numeric_features": _listed(bad),
                        "instances": rows[:MAX_LISTED]})
    return x


_ABSENT = object()


def prediction_body(*, name: str, version: str, risk: np.ndarray, survival: np.ndarray | None,
                    times_days) -> dict:
    """The 200 body; 422 when inputs far outside the model's range made a prediction overflow
    (JSON has no NaN or infinity, and such a score means nothing)."""
    bad = ~np.isfinite(risk)
    if survival is not None:
        bad |= ~np.isfinite(survival).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise ApiError(422, "prediction_out_of_range",
                       f"the model's prediction is not finite for {len(rows)} instance(s): their values are far "
                       f"outside the range it was trained on (check the units and scale, e.g. log2 expression)",
                       {"instances": rows[:MAX_LISTED]})
    out = {"model": name, "version": version, "n": int(risk.size), "risk": [float(r) for r in risk],
           "survival": None}
    if survival is not None:
        out["survival"] = {"times_days": [float(t) for t in times_days],
                           "probabilities": [[float(p) for p in row] for row in survival]}
    return out
