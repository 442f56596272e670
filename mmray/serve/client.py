"""A small Python client of the mmray HTTP API.

>>> client = MmrayClient("http://127.0.0.1:8000", token=None)
>>> client.health()
{'status': 'ok'}
>>> [m["name"] for m in client.models()]
['sig__SIG_IMMUNE_CYTOLYTIC', ...]
>>> client.predict("sig__SIG_IMMUNE_CYTOLYTIC", [{"CD8A": 5.1, "GZMB": 3.3, ...}])
{'model': 'sig__SIG_IMMUNE_CYTOLYTIC', 'version': '1', 'n': 1, 'risk': [...], 'survival': {...}}

Errors come back as :class:`ServeError` with the HTTP status and the
server's JSON body (e.g. the missing feature names of a 422).
"""

from __future__ import annotations

from urllib.parse import quote

import requests

from mmray.errors import MmrayError
from mmray.serve.schemas import MODEL_HEADER


class ServeError(MmrayError):
    """The server answered with an error status."""

    def __init__(self, message: str, *, status: int = 0, body: dict | None = None):
        self.status = status
        self.body = body or {}
        super().__init__(message)


class MmrayClient:
    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> MmrayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw) -> dict:
        url = f"{self.base_url}{path}"
        try:
            r = self.session.request(method, url, timeout=self.timeout_s, **kw)
        except requests.RequestException as e:
            raise ServeError(f"{method} {url}: cannot reach the server ({e}); is `mmray serve` running?") from e
        try:
            body = r.json()
        except ValueError:
            body = {"message": r.text[:500]}
        if r.status_code >= 400:
            raise ServeError(f"{method} {path}: HTTP {r.status_code}: {body.get('message', body)}",
                             status=r.status_code, body=body)
        return body

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def models(self) -> list[dict]:
        """Servable models: name, version, features, metrics."""
        return self._call("GET", "/v1/models")["models"]

    def stats(self) -> dict:
        """Counters of the replica that answers (requests, loads, cache hit rate, loaded models)."""
        return self._call("GET", "/v1/stats")

    def predict(self, model: str, instances: list[dict] | None = None, *, rows: list[list[float]] | None = None
                ) -> dict:
        """Risk (and survival curves) for patients given by feature name (``instances``) or as ``rows``."""
        if (instances is None) == (rows is None):
            raise ServeError("give instances (a list of {feature: value}) or rows (lists in feature order)")
        body = {"instances": instances} if instances is not None else {"rows": rows}
        return self._call("POST", "/v1/predict", json=body, headers={MODEL_HEADER: model})

    def explain(self, model: str, instances: list[dict], *, top_k: int = 10) -> dict:
        """Per-instance risk, curve, modality and feature contributions (``POST /v1/explain/{model}``)."""
        return self._call("POST", f"/v1/explain/{quote(model, safe='')}", json={"instances": instances,
                                                                                "top_k": top_k},
                          headers={MODEL_HEADER: model})

    def fhir(self, model: str, bundle: dict) -> dict:
        """A FHIR RiskAssessment for a Bundle of one Patient and its Observations (``POST /v1/fhir/{model}``);
        an error's OperationOutcome diagnostics in the ServeError message."""
        r_path = f"/v1/fhir/{quote(model, safe='')}"
        try:
            return self._call("POST", r_path, json=bundle, headers={MODEL_HEADER: model,
                                                                     "Content-Type": "application/fhir+json"})
        except ServeError as e:
            issues = (e.body or {}).get("issue") or [{}]
            if issues[0].get("diagnostics"):
                raise ServeError(f"POST {r_path}: HTTP {e.status}: {issues[0]['diagnostics']}", status=e.status,
                                 body=e.body) from None
            raise
