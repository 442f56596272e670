"""The locked-down endpoint over real HTTP (conftest.py starts it): the body size limit and the token
kept out of what Ray holds and what the processes log."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
import ray
import ray._private.state
import requests
from ray import serve
from ray.experimental import internal_kv
from .serve_testdata import MAX_REQUEST_BYTES, MODELS, TOKEN

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {TOKEN}", "serve_multiplexed_model_id": MODELS[0],
           "Content-Type": "application/json"}


def _raw_post(url: str, *, headers: dict, chunks=(), content_length: int | None = None):
    """POST with http.client: send the headers (and a declared length, possibly a lie), then ``chunks``."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("POST", "/v1/predict")
    for k, v in headers.items():
        conn.putheader(k, v)
    if content_length is not None:
        conn.putheader("Content-Length", str(content_length))
    else:
        conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for chunk in chunks:
        conn.send(chunk if content_length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
    if content_length is None:
        conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_sent(server):
    status, body = _raw_post(server["url"], headers=HEADERS, content_length=10 * 2**30)  # 10 GiB, none sent
    assert status == 413 and body["error"] == "request_too_large"
    assert body["max_request_bytes"] == MAX_REQUEST_BYTES and "10240.0 MiB" in body["message"]


def test_a_chunked_body_over_the_limit_is_413(server):
    row = json.dumps([1.0] * 15).encode()
    head, chunk = b'{"rows": [', (row + b",") * 200  # ~13 KB per chunk, no Content-Length
    n_chunks = MAX_REQUEST_BYTES // len(chunk) + 2
    status, body = _raw_post(server["url"], headers=HEADERS, chunks=[head] + [chunk] * n_chunks + [row + b"]}"])
    assert status == 413 and body["error"] == "request_too_large"
    # under the limit, the same framing is parsed (and answered on its merits)
    small = [head, row, b"]}"]
    assert _raw_post(server["url"], headers=HEADERS, chunks=small) == (
        200, requests.post(f"{server['url']}/v1/predict", data=b"".join(small), headers=HEADERS, timeout=60).json())


def test_a_body_just_under_the_limit_is_parsed(server, client):
    rows = [[1.0] * 15] * 10
    pad = MAX_REQUEST_BYTES - len(json.dumps({"rows": rows})) - 64
    data = json.dumps({"rows": rows, "padding": "x" * pad}).encode()  # unknown keys are ignored
    assert len(data) < MAX_REQUEST_BYTES
    r = requests.post(f"{server['url']}/v1/predict", data=data, headers=HEADERS, timeout=60)
    assert r.status_code == 200 and r.json()["n"] == 10
    r = requests.post(f"{server['url']}/v1/predict", data=data + b" " * 100, headers=HEADERS, timeout=60)
    assert r.status_code == 413


def _scan(blob: bytes) -> tuple[bool, bool]:
    """(token found, token digest found) in ``blob``."""
    return TOKEN.encode() in blob, hashlib.sha256(TOKEN.encode()).hexdigest().encode() in blob


def test_the_token_is_in_nothing_ray_holds_or_logs(server, client, patients):
    # requests of every kind first, so the logs below have something to hold
    client.predict(MODELS[0], patients.head(2).to_dict(orient="records"))
    requests.post(f"{server['url']}/v1/predict", json={"rows": [[1.0]]}, headers=HEADERS, timeout=60)
    requests.get(f"{server['url']}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=60)
    # What the dashboard shows: Serve's status and instance details (deployment configs, actor options,
    # runtime envs), the actor and job tables (names, runtime envs, entrypoints).
    controller = serve.context._get_global_client()._controller
    shown = {"status": str(serve.status()),
             "details": json.dumps(ray.get(controller.get_serve_instance_details.remote()), default=str),
             "actors": json.dumps(ray._private.state.actors(), default=str),
             "jobs": json.dumps(ray._private.state.jobs(), default=str),
             "named": json.dumps(ray.util.list_named_actors(all_namespaces=True))}
    assert "MmrayModels" in shown["details"] and "ServeReplica:mmray:MmrayModels" in shown["actors"]
    for name, text in shown.items():
        assert _scan(text.encode()) == (False, False), name
    # What Serve's controller checkpoints in the GCS (the deployment's pickled init arguments):
    # the digest the replicas check against, never the token.
    kv = {k: internal_kv._internal_kv_get(k, namespace=b"serve") or b""
          for k in internal_kv._internal_kv_list(b"", namespace=b"serve")}
    assert any(k.endswith(b"deployment-state-checkpoint") for k in kv)
    assert not any(_scan(v)[0] for v in kv.values())
    assert any(_scan(v)[1] for v in kv.values())  # the scan reads the init arguments
    # Every log of the session: driver, raylet, controller, proxy, replica.
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    text = b"".join(p.read_bytes() for p in files)
    replica_logs = b"".join(p.read_bytes() for p in files if p.name.startswith("replica_"))
    assert b"POST /v1/predict 200" in replica_logs and b"401" in replica_logs  # the access logs are read
    assert not _scan(text)[0], [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
