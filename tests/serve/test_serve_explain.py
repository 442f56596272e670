"""POST /v1/explain/{model} and POST /v1/fhir/{model} on the real Serve app (conftest.py starts it).

The FHIR contract: a Bundle built from a store patient's expression row answers a RiskAssessment that
fhir.resources validates and whose risk score equals /v1/predict's for the same patient. Both routes
are fuzzed like /v1/predict: any body gets an answer below 500 (JSON error / OperationOutcome).
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter

import pytest
import requests
from fhir.resources.R4B.riskassessment import RiskAssessment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from .serve_testdata import MODELS, TOKEN
from .test_serve_fuzz import JSON, SCALARS

from mmray.serve.fhir import EXT_MISSING_FEATURE, EXT_MISSING_MODALITY, EXT_RISK_SCORE, MMRAY_SYSTEM, bundle_for

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_FUZZ = 120


@pytest.fixture(scope="module")
def served(client):
    return {m["name"]: m["features"] for m in client.models()}


def _post(server, path, body, **kw):
    return requests.post(f"{server['url']}{path}", data=json.dumps(body), headers={**AUTH, **kw}, timeout=30)


def test_fhir_risk_equals_predict_and_the_answer_is_valid_fhir(server, client, served, patients):
    name = MODELS[1]
    features = served[name]
    for pid, row in patients.head(3).iterrows():
        want = client.predict(name, [row.to_dict()])
        ra = client.fhir(name, bundle_for(features, [row[f] for f in features], patient_id=f"p{pid}"))
        RiskAssessment.model_validate(ra)
        ext = {e["url"]: e for e in ra["extension"]}
        assert ext[EXT_RISK_SCORE]["valueDecimal"] == want["risk"][0]  # the same number, not just close
        assert EXT_MISSING_FEATURE not in ext and ra["subject"]["reference"] == f"Patient/p{pid}"
        probs = [p["probabilityDecimal"] for p in ra["prediction"]]
        assert probs == pytest.approx([1 - s for s in want["survival"]["probabilities"][0]], abs=1e-12)
        assert [p["whenRange"]["high"]["value"] for p in ra["prediction"]] == want["survival"]["times_days"]


def test_fhir_missing_observations_are_listed_and_imputed(server, served, patients):
    name = MODELS[1]
    features = served[name]
    row = patients.iloc[0]
    dropped = features[:2]
    values = [None if f in dropped else row[f] for f in features]
    r = _post(server, f"/v1/fhir/{name}", bundle_for(features, values, patient_id="p0"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    ra = r.json()
    missing = [e["valueString"] for e in ra["extension"] if e["url"] == EXT_MISSING_FEATURE]
    assert missing == dropped and not [e for e in ra["extension"] if e["url"] == EXT_MISSING_MODALITY]
    none = _post(server, f"/v1/fhir/{name}", bundle_for(features, [None] * len(features), patient_id="p0"))
    assert none.status_code == 422 and "no Observation" in none.json()["issue"][0]["diagnostics"]


def test_explain_route_matches_predict_and_masking_adds_up(server, client, served, patients):
    name = MODELS[0]
    rows = patients.head(2).to_dict(orient="records")
    want = client.predict(name, rows)
    got = client.explain(name, rows, top_k=100)
    assert got["n"] == 2 and [e["risk"] for e in got["explanations"]] == want["risk"]
    for e in got["explanations"]:
        (mod,) = e["modalities"]  # a signature model reads one modality: expression
        assert mod["modality"] == "expression" and mod["present"]
        # affine Cox pipeline: masking every gene at once moves the risk by the sum of single masks
        assert sum(f["contribution"] for f in e["top_features"]) == pytest.approx(mod["contribution"], rel=1e-6)
        assert len(e["top_features"]) == len(served[name]) and e["top_genes"][0]["gene"] in served[name]


@pytest.mark.parametrize("path,body,status", [
    ("/v1/explain/sig__NO_SUCH", {"instances": [{}]}, 404),
    ("/v1/explain/" + MODELS[0], {"instances": [{"MKI67": 1.0}]}, 422),  # features missing: as /v1/predict
    ("/v1/explain/" + MODELS[0], {"rows": [[0.0]], "top_k": 0}, 422),
    ("/v1/fhir/sig__NO_SUCH", {"resourceType": "Bundle", "type": "collection"}, 404),
    ("/v1/fhir/" + MODELS[0], {"resourceType": "Observation"}, 422),
    ("/v1/fhir/" + MODELS[0], {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": 3}]}, 422),
])
def test_bad_requests_are_4xx_with_a_message(server, path, body, status):
    r = _post(server, path, body)
    assert r.status_code == status, r.text
    msg = r.json()["issue"][0]["diagnostics"] if "/fhir/" in path else r.json()["message"]
    assert len(msg) > 15


def test_the_new_routes_need_the_token(server):
    for path in ("/v1/explain/" + MODELS[0], "/v1/fhir/" + MODELS[0]):
        r = requests.post(f"{server['url']}{path}", data=b"{}", timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


@st.composite
def bundles(draw, features: list[str]) -> dict:
    """Bundles shaped like a client's, any part broken: values, codes, resource types, fields."""
    b = bundle_for(features, [draw(st.floats(-5, 5)) for _ in features], patient_id="p")
    for e in b["entry"]:
        if draw(st.integers(0, 6)) == 0:
            res = e["resource"]
            field = draw(st.sampled_from(["valueQuantity", "code", "subject", "status", "resourceType", "id",
                                          "valueBoolean", "effectiveDateTime", "extra"]))
            res[field] = draw(st.one_of(JSON, SCALARS, st.just({"coding": [{"system": MMRAY_SYSTEM,
                                                                            "code": draw(st.text(max_size=8))}]})))
    if draw(st.integers(0, 4)) == 0:
        b[draw(st.sampled_from(["entry", "type", "resourceType"]))] = draw(JSON)
    return b


def test_no_fhir_or_explain_request_gets_a_5xx(server, served):
    name = MODELS[0]
    features = served[name]
    session = requests.Session()
    seen: list[tuple[str, int]] = []

    @settings(max_examples=N_FUZZ, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(bundles(features).map(lambda b: ("fhir", b)), JSON.map(lambda b: ("fhir", b)),
                     JSON.map(lambda b: ("explain", b)),
                     st.lists(st.dictionaries(st.sampled_from(features), SCALARS), max_size=3).map(
                         lambda i: ("explain", {"instances": i}))))
    def one(req):
        route, body = req
        start = time.perf_counter()
        r = session.post(f"{server['url']}/v1/{route}/{name}", data=json.dumps(copy.deepcopy(body)), headers=AUTH,
                         timeout=30)
        answer = r.json()
        seen.append((route, r.status_code))
        assert r.status_code < 500, (r.status_code, answer)
        assert time.perf_counter() - start < 5.0
        if r.status_code != 200:
            assert (answer["issue"][0]["diagnostics"] if route == "fhir" else answer["message"])
        elif route == "fhir":
            RiskAssessment.model_validate(answer)

    one()
    counts = Counter(seen)
    print(f"\nfhir/explain fuzz: {dict(sorted(counts.items()))}")
    assert counts[("fhir", 200)] and counts[("fhir", 422)] and counts[("explain", 422)]
