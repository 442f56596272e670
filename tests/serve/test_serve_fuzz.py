"""Property-based requests to POST /v1/predict of the real Serve app (conftest.py starts it on 127.0.0.1).

Hypothesis draws bodies of every kind -- bytes that are not JSON, JSON of any shape, predict bodies
with wrong types, NaN and infinities, integers too large for a float, finite values that overflow
the model, unknown and malformed model names, arrays past the instance limit, bodies past the size
limit, nesting too deep to parse -- and each request must get an answer below 500, a JSON body with
an ``error`` code when it is not a 200, and come back within ``BOUND_S``. Derandomized: CI sends the
same requests every run; the count and the worst latency are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from .serve_testdata import MAX_INSTANCES, MAX_REQUEST_BYTES, MODELS, TOKEN

pytestmark = pytest.mark.integration
BOUND_S = 2.0  # generous: most answers take 5-30 ms here, a body at this server's 128 KiB limit ~0.1 s
N_EXAMPLES = 300

NUMBERS = st.one_of(st.floats(), st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
                    st.sampled_from([1e308, -1e308, 1e300, 5e-324, 0.0, -0.0, 7.5, 10**309, -(10**309)]))
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=6),
                    max_leaves=40)
NAMES = st.one_of(st.sampled_from(MODELS), st.sampled_from(["sig__NO_SUCH", "", " ", "sig__", "x" * 300]),
                  st.text(max_size=40), st.text(max_size=300).map(lambda t: "sig__" + t))
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)  # what HTTP carries


@st.composite
def predict_bodies(draw, genes: list[str]) -> dict:
    """Bodies shaped like predict requests, any part of them wrong."""
    keys = st.one_of(st.sampled_from(genes), st.text(max_size=10))
    body: dict = {}
    if draw(st.booleans()):
        body["model"] = draw(st.one_of(NAMES, SCALARS))
    kind = draw(st.sampled_from(["instances", "rows", "both", "neither"]))
    if kind in ("instances", "both"):
        body["instances"] = draw(st.one_of(st.lists(st.dictionaries(keys, SCALARS, max_size=20), max_size=4), JSON))
    if kind in ("rows", "both"):
        body["rows"] = draw(st.one_of(st.lists(st.lists(SCALARS, max_size=20), max_size=4), JSON))
    return body


@st.composite
def targeted_bodies(draw, models: dict[str, list[str]], genes: list[str]) -> tuple[dict, str | None]:
    """A served model (header or body) and its features, some values, keys or rows broken:
    ``(body, header model or None)``. Many of these are valid and get a 200."""
    name = draw(st.sampled_from(sorted(models)))
    features = models[name]
    header = name if draw(st.booleans()) else None
    body: dict = {} if header else {"model": name}
    n = draw(st.integers(1, 6))
    odd = st.integers(0, 14).map(lambda k: k == 0)  # about one value, key or row in 15 is broken
    if draw(st.booleans()):
        extra = st.dictionaries(st.sampled_from(genes), st.floats(-20, 20), max_size=5)
        body["instances"] = [{**draw(extra), **{f: draw(SCALARS) if draw(odd) else draw(st.floats(-20, 20))
                                                for f in features if not draw(odd)}} for _ in range(n)]
    else:  # each row at one scale: finite values that large overflow the model's score
        scales = st.sampled_from([20.0, 20.0, 20.0, 1e3, 1e100, 1e300, 1.7e308])
        body["rows"] = [draw(st.lists(NUMBERS, min_size=len(features) - 1, max_size=len(features) + 1))
                        if draw(odd) else [draw(NUMBERS) if draw(odd) else draw(st.floats(-1, 1)) * scale
                                           for scale in [draw(scales)] for _ in features]
                        for _ in range(n)]
    return body, header


def huge_bodies(features: list[str]):
    """Past a limit, or close to one: instances, body size, nesting depth."""
    row = [1.5] * len(features)
    per_row = len(json.dumps(row)) + 2
    return st.sampled_from([
        json.dumps({"rows": [row] * (MAX_INSTANCES + 1)}).encode(),  # too many instances (under the byte limit)
        json.dumps({"rows": [row] * (MAX_REQUEST_BYTES // per_row - 50)}).encode(),  # near the byte limit
        json.dumps({"rows": [row] * (MAX_REQUEST_BYTES // per_row + 50)}).encode(),  # past it: 413
        json.dumps({"instances": [{}] * (MAX_INSTANCES * 10)}).encode(),
        json.dumps({"rows": [0] * (MAX_REQUEST_BYTES // 2 - 20)}).encode(),  # one flat array
        b"[" * 50_000 + b"]" * 50_000,  # deeper than the parser recurses
        b'{"rows": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b'{"rows": [' + b"9" * 5000 + b"]}",  # past Python's integer-digit limit
    ])


def encode(value) -> bytes:
    return json.dumps(value).encode()  # NaN and infinities become NaN, Infinity (which Python's parser reads)


def _requests(models: dict[str, list[str]], genes: list[str]):
    """``((body bytes, headers), token)``."""
    headers = st.fixed_dictionaries({}, optional={
        "serve_multiplexed_model_id": st.one_of(st.sampled_from(MODELS), HEADER_TEXT),
        "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    })
    untargeted = st.tuples(st.one_of(
        st.binary(max_size=400),
        st.text(alphabet='{}[]":,.-+eE0123456789 tnrufalsNIy\\', max_size=200).map(str.encode),
        JSON.map(encode),
        predict_bodies(genes).map(encode),
    ), headers)
    huge = st.tuples(huge_bodies(models[MODELS[0]]), st.just({"serve_multiplexed_model_id": MODELS[0]}))
    targeted = targeted_bodies(models, genes).map(
        lambda bh: (encode(bh[0]), {"serve_multiplexed_model_id": bh[1]} if bh[1] else {}))
    token = st.sampled_from([TOKEN] * 9 + ["wrong", None])
    return st.tuples(st.one_of(untargeted, huge, targeted, targeted), token)


def test_no_predict_request_gets_a_5xx_or_takes_longer_than_the_bound(server, client, patients):
    models = {m["name"]: m["features"] for m in client.models()}
    genes = list(patients.columns)
    for name in models:  # first loads are not what this measures
        client.predict(name, patients.head(1).to_dict(orient="records"))
    session = requests.Session()
    seen: list[tuple[int, float, str]] = []

    @settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(_requests(models, genes))
    def one(request):
        (data, headers), token = request
        headers = dict(headers)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        start = time.perf_counter()
        r = session.post(f"{server['url']}/v1/predict", data=data, headers=headers, timeout=30)
        elapsed = time.perf_counter() - start
        body = r.json()  # every answer is JSON
        seen.append((r.status_code, elapsed, body.get("error", "")))
        assert r.status_code < 500, (r.status_code, body, data[:300])
        assert elapsed < BOUND_S, (elapsed, r.status_code, len(data))
        if r.status_code == 200:
            assert body["n"] == len(body["risk"]) and all(math.isfinite(v) for v in body["risk"])
        else:
            assert body["error"] and body["message"]

    one()
    statuses = Counter(s for s, _, _ in seen)
    worst = max(seen, key=lambda s: s[1])
    print(f"\nfuzz: {len(seen)} requests, worst latency {worst[1] * 1000:.0f} ms ({worst[0]} {worst[2]}), "
          f"statuses {dict(sorted(statuses.items()))}, errors {dict(Counter(e for _, _, e in seen).most_common())}")
    assert len(seen) >= N_EXAMPLES
    assert {200, 401, 404, 413, 422} <= set(statuses)  # the strategies reach every answer
