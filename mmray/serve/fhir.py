"""FHIR R4 in and out of the endpoint: a ``Bundle`` of Observations -> a model's inputs -> a ``RiskAssessment``.

``POST /v1/fhir/{model}`` takes a Bundle (``type`` any) holding one
``Patient`` and ``Observation`` resources. An Observation is the value of
one model feature when one of its ``code.coding`` entries is

* ``{"system": "http://loinc.org", "code": ...}`` for the features with a
  LOINC code (:data:`LOINC`: age, body weight, height, BMI; units are
  converted from UCUM codes, e.g. kg -> lb), or
* ``{"system": MMRAY_SYSTEM, "code": "<feature name>"}`` for every other
  feature, named exactly as ``GET /v1/models`` lists it (a gene of a
  signature model, ``expression__MKI67``, ``clinical__gender=male``, ...).

Values are ``valueQuantity``, ``valueInteger`` or ``valueBoolean`` (1/0).
When a feature is coded more than once the latest (``effectiveDateTime``,
else Bundle order) wins. Observations with status ``entered-in-error`` or
``cancelled`` are ignored. A feature without an observation is missing:
NaN, which the model imputes as in training, and a modality none of whose
features came is absent (``has_<group>`` 0, as the point-in-time join writes
a patient without it). Both are listed in the RiskAssessment
(:data:`EXT_MISSING_FEATURE` / :data:`EXT_MISSING_MODALITY` extensions and a
note).

The RiskAssessment carries the model's risk score
(:data:`EXT_RISK_SCORE`, the number ``/v1/predict`` returns), and one
``prediction`` per survival horizon: ``probabilityDecimal`` = P(event by t)
= 1 - S(t), ``whenRange.high`` = t days. Both directions are validated with
``fhir.resources`` (its R4B models: R4's RiskAssessment, Bundle and
Observation are unchanged in R4B).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from mmray.report.explain import FLAG, feature_groups
from mmray.serve.schemas import ApiError

LOINC_SYSTEM = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MMRAY_SYSTEM = "https://mmray.dev/fhir/CodeSystem/feature"
EXT = "https://mmray.dev/fhir/StructureDefinition/"
EXT_RISK_SCORE = EXT + "risk-score"
EXT_MISSING_FEATURE = EXT + "missing-feature"
EXT_MISSING_MODALITY = EXT + "missing-modality"
MODEL_SYSTEM = "https://mmray.dev/fhir/CodeSystem/model"
MAX_ENTRIES = 20000
IGNORED_STATUS = {"entered-in-error", "cancelled"}

# feature column (after the group prefix) -> (LOINC code, display, unit the model takes, {UCUM unit: factor})
LOINC = {
    "age_at_diagnosis_years": ("30525-0", "Age", "a", {"a": 1.0, "mo": 1 / 12, "wk": 1 / 52.1775, "d": 1 / 365.25}),
    "age_years": ("30525-0", "Age", "a", {"a": 1.0, "mo": 1 / 12, "wk": 1 / 52.1775, "d": 1 / 365.25}),
    "weight_lbs": ("29463-7", "Body weight", "[lb_av]", {"[lb_av]": 1.0, "lb": 1.0, "kg": 2.2046226218,
                                                         "g": 0.0022046226218}),
    "weight_kg": ("29463-7", "Body weight", "kg", {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237}),
    "height_cm": ("8302-2", "Body height", "cm", {"cm": 1.0, "m": 100.0, "[in_i]": 2.54}),
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", {"kg/m2": 1.0}),
}


def loinc_of(feature: str):
    """The :data:`LOINC` entry of a feature (``clinical__age_at_diagnosis_years``), or None."""
    return LOINC.get(feature.rsplit("__", 1)[-1])


def observation_coding(feature: str) -> list[dict]:
    """How a client codes ``feature``: LOINC first where it has one, the mmray code always."""
    out = []
    hit = loinc_of(feature)
    if hit is not None:
        out.append({"system": LOINC_SYSTEM, "code": hit[0], "display": hit[1]})
    out.append({"system": MMRAY_SYSTEM, "code": feature})
    return out


def bundle_for(features: list[str], values, *, patient_id: str = "example") -> dict:
    """A Bundle of one Patient and one Observation per finite value (what a client sends)."""
    entries = [{"fullUrl": f"urn:uuid:patient-{patient_id}", "resource": {"resourceType": "Patient", "id": patient_id}}]
    for k, (f, v) in enumerate(zip(features, values)):
        if f.startswith(FLAG) or v is None or not np.isfinite(v):
            continue
        hit = loinc_of(f)
        quantity = {"value": float(v)}
        if hit is not None:
            quantity.update(unit=hit[2], system=UCUM, code=hit[2])
        entries.append({"fullUrl": f"urn:uuid:obs-{k}", "resource": {
            "resourceType": "Observation", "id": f"obs-{k}", "status": "final",
            "code": {"coding": observation_coding(f)}, "subject": {"reference": f"Patient/{patient_id}"},
            "valueQuantity": quantity}})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _invalid(message: str, **extra) -> ApiError:
    return ApiError(422, "invalid_fhir", message, extra)


def _validate_bundle(body: dict):
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    if body.get("resourceType") != "Bundle":
        raise _invalid(f"expected a FHIR R4 Bundle (resourceType 'Bundle'), got resourceType "
                       f"{str(body.get('resourceType'))[:40]!r}; send a Bundle of a Patient and its Observations")
    entries = body.get("entry")
    if isinstance(entries, list) and len(entries) > MAX_ENTRIES:
        raise _invalid(f"the Bundle has {len(entries)} entries; the limit is {MAX_ENTRIES}")
    try:
        return Bundle.model_validate(body)
    except ValidationError as e:
        where = ["/".join(str(p) for p in err.get("loc", ())) + f": {err.get('type', 'invalid')}"
                 for err in e.errors()[:10]]
        raise _invalid(f"the Bundle is not valid FHIR R4 ({e.error_count()} problem(s)): {'; '.join(where)}",
                       problems=where) from None
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # fhir.resources' own checks
        raise _invalid(f"the Bundle is not valid FHIR R4 ({type(e).__name__}); check the resources' fields") from None


def _feature_of(coding, features: set[str]):
    """``(feature, unit factors or None)`` named by one coding, or None."""
    system, code = str(coding.system or ""), str(coding.code or "")
    if system == MMRAY_SYSTEM and code in features:
        return code, None
    if system == LOINC_SYSTEM:
        for f in features:
            hit = loinc_of(f)
            if hit is not None and hit[0] == code:
                return f, hit
    return None


def _value(obs, hit, where: str) -> float:
    if obs.valueBoolean is not None:
        return 1.0 if obs.valueBoolean else 0.0
    if obs.valueInteger is not None:
        return float(obs.valueInteger)
    q = obs.valueQuantity
    if q is None or q.value is None:
        raise _invalid(f"{where} has no valueQuantity, valueInteger or valueBoolean; send the number")
    value = float(q.value)
    if hit is not None:
        unit = str(q.code or q.unit or hit[2])
        factor = hit[3].get(unit)
        if factor is None:
            raise _invalid(f"{where}: unit {unit[:20]!r} is not one of {sorted(hit[3])} (UCUM codes) for LOINC "
                           f"{hit[0]}")
        value *= factor
    if not np.isfinite(value):
        raise _invalid(f"{where}: the value is not a finite number")
    return value


def _when(obs) -> str:
    for field in ("effectiveDateTime", "issued"):
        v = getattr(obs, field, None)
        if v is not None:
            return v.isoformat() if hasattr(v, "isoformat") else str(v)
    return ""


def parse_bundle(body: dict, features: list[str], *, default_group: str = "expression") -> dict:
    """The model's inputs from a Bundle: ``{"x": [1, F], "patient": ref, "missing_features",
    "missing_modalities", "basis": [Observation refs], "used": n}``; :class:`ApiError` 422 otherwise."""
    bundle = _validate_bundle(body)
    patients, observations = [], []
    for k, entry in enumerate(bundle.entry or []):
        res = entry.resource
        if res is None:
            continue
        kind = res.get_resource_type()
        if kind == "Patient":
            patients.append((entry, res))
        elif kind == "Observation":
            observations.append((k, entry, res))
    if len(patients) != 1:
        raise _invalid(f"the Bundle holds {len(patients)} Patient resources; send exactly one (one patient per "
                       f"request)")
    p_entry, patient = patients[0]
    refs = {f"Patient/{patient.id}"} if patient.id else set()
    if p_entry.fullUrl:
        refs.add(str(p_entry.fullUrl))
    wanted = set(features)
    latest: dict[str, tuple[str, int, float, str | None]] = {}
    for k, entry, obs in observations:
        if str(obs.status) in IGNORED_STATUS:
            continue
        subject = obs.subject.reference if obs.subject is not None else None
        if subject is not None and refs and str(subject) not in refs:
            raise _invalid(f"entry[{k}] (Observation) is about {str(subject)[:60]!r}, not the Bundle's Patient; "
                           f"send one patient's observations per Bundle")
        named = [hit for c in (obs.code.coding or []) if (hit := _feature_of(c, wanted)) is not None]
        if not named:
            continue
        feature, hit = named[0]
        value = _value(obs, hit, f"entry[{k}] (Observation {feature[:60]})")
        when = _when(obs)
        ref = str(entry.fullUrl) if entry.fullUrl else (f"Observation/{obs.id}" if obs.id else None)
        if feature not in latest or (when, k) >= latest[feature][:2]:
            latest[feature] = (when, k, value, ref)
    if not latest:
        raise _invalid("no Observation in the Bundle codes a feature of this model; code each with LOINC or "
                       f"{MMRAY_SYSTEM} and the feature name as GET /v1/models lists it",
                       example_codes=[observation_coding(f)[0] for f in features if not f.startswith(FLAG)][:5])
    x = np.full((1, len(features)), np.nan)
    groups = feature_groups(features, default_group=default_group)
    missing_modalities = []
    for g, idx in groups.items():
        given = [j for j in idx if features[j] in latest and not features[j].startswith(FLAG)]
        if not given:
            missing_modalities.append(g)
        for j in idx:
            f = features[j]
            if f in latest:
                x[0, j] = latest[f][2]
            elif f == FLAG + g:
                x[0, j] = 1.0 if given else 0.0
    missing_features = [f for f in features if f not in latest and not f.startswith(FLAG)]
    return {"x": x, "patient": f"Patient/{patient.id}" if patient.id else (str(p_entry.fullUrl) or None),
            "missing_features": missing_features, "missing_modalities": missing_modalities,
            "basis": [v[3] for v in latest.values() if v[3]], "used": len(latest)}


def risk_assessment(*, name: str, version: str, risk: float, survival, times_days, parsed: dict) -> dict:
    """The RiskAssessment answer (module doc), validated with fhir.resources."""
    from fhir.resources.R4B.riskassessment import RiskAssessment

    if not np.isfinite(risk) or (survival is not None and not np.isfinite(survival).all()):
        raise ApiError(422, "prediction_out_of_range", "the model's prediction is not finite: the values are far "
                                                       "outside the range it was trained on (check units and scale)")
    ext = [{"url": EXT_RISK_SCORE, "valueDecimal": float(risk)}]
    ext += [{"url": EXT_MISSING_MODALITY, "valueString": g} for g in parsed["missing_modalities"]]
    ext += [{"url": EXT_MISSING_FEATURE, "valueString": f} for f in parsed["missing_features"]]
    predictions = []
    if survival is not None:
        for t, s in zip(times_days, survival):
            predictions.append({"outcome": {"text": f"event (the model's survival endpoint) within {t:g} days"},
                                "probabilityDecimal": float(min(1.0, max(0.0, 1.0 - float(s)))),
                                "whenRange": {"high": {"value": float(t), "unit": "d", "system": UCUM, "code": "d"}}})
    notes = []
    if parsed["missing_modalities"] or parsed["missing_features"]:
        notes.append({"text": f"Predicted without {len(parsed['missing_features'])} feature(s) (imputed as in "
                              f"training) and modalities absent: {', '.join(parsed['missing_modalities']) or 'none'}; "
                              f"the {EXT_MISSING_FEATURE} and {EXT_MISSING_MODALITY} extensions list them."})
    out = {"resourceType": "RiskAssessment", "status": "final", "extension": ext,
           "method": {"coding": [{"system": MODEL_SYSTEM, "code": name, "display": f"{name} v{version}"}],
                      "text": f"mmray model {name} version {version}"},
           "subject": {"reference": parsed["patient"] or "Patient/unknown"},
           "occurrenceDateTime": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "basis": [{"reference": r} for r in parsed["basis"][:1000]],
           "prediction": predictions}
    if notes:
        out["note"] = notes
    if not out["basis"]:
        del out["basis"]
    if not out["prediction"]:
        del out["prediction"]
    RiskAssessment.model_validate(out)  # what we send is valid R4 (raises on a bug here, not on input)
    return out


def operation_outcome(e: ApiError) -> dict:
    """A FHIR OperationOutcome for an error answer (``error`` code in ``details.text``)."""
    code = {400: "invalid", 401: "security", 404: "not-found", 413: "too-costly", 422: "invalid"}.get(e.status,
                                                                                                     "exception")
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code,
                                                           "details": {"text": e.error}, "diagnostics": e.message}]}
