"""Bodies of ``POST /v1/explain/{model}`` and ``POST /v1/fhir/{model}`` (run in a worker thread of the replica).

Explain takes /v1/predict's body (``instances`` by feature name or ``rows``
in feature order, numbers only) plus an optional ``top_k`` (1..100), and
answers one :func:`mmray.report.explain.explain_row` per instance. Masking
costs one model row per present modality and feature, so at most
:data:`MAX_EXPLAIN_INSTANCES` instances per request. The served replica has
no feature store, so its explanations carry no slide locations; ``mmray
explain --store`` adds them.
"""

from __future__ import annotations

from mmray.report.explain import explain_row
from mmray.serve.fhir import parse_bundle, risk_assessment
from mmray.serve.schemas import ApiError, parse_inputs

MAX_EXPLAIN_INSTANCES = 50
MAX_TOP_K = 100


def _default_group(model) -> str:
    return str(getattr(model, "info", {}).get("group", "expression"))


def explain_body(body: dict, *, name: str, version: str, model, max_instances: int) -> dict:
    top_k = body.get("top_k", 10)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ApiError(422, "invalid_top_k", f"'top_k' must be an integer from 1 to {MAX_TOP_K}")
    x = parse_inputs(body, model.features, max_instances=min(max_instances, MAX_EXPLAIN_INSTANCES))
    risk, _ = model.predict_arrays(x)  # /v1/predict's numbers, and its refusal of overflowing inputs
    from mmray.serve.schemas import prediction_body

    prediction_body(name=name, version=version, risk=risk, survival=None, times_days=())
    group = _default_group(model)
    out = []
    for i in range(len(x)):
        e = explain_row(model, x[i], top_k=top_k, default_group=group)
        e["risk"] = float(risk[i])
        out.append(e)
    return {"model": name, "version": version, "n": len(out), "explanations": out}


def fhir_body(body: dict, *, name: str, version: str, model) -> dict:
    parsed = parse_bundle(body, model.features, default_group=_default_group(model))
    risk, surv = model.predict_arrays(parsed["x"])
    return risk_assessment(name=name, version=version, risk=float(risk[0]),
                           survival=None if surv is None else surv[0], times_days=model.times_days,
                           parsed=parsed)
