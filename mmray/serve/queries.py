"""Real HTTP predict requests to a running endpoint, with patients' rows taken from the store.

The pipeline's ``serve`` stage uses this to show (and check) that every
served model answers: for each model it finds a store table that holds all
of the model's feature names (the ``expression`` group for the ``sig__*``
signature models, whose features are gene names; the point-in-time training
table, ``<group>__<column>``, for the tuned fusion models) and sends a few
complete patient rows by name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pandas as pd

from mmray.serve.client import MmrayClient, ServeError
from mmray.store import FeatureStore, training_table

log = logging.getLogger(__name__)
KEYS = ("patient_id", "event_time")


class StoreRows:
    """Candidate input tables from a store, read once and only when a model needs them."""

    def __init__(self, store: FeatureStore, *, labels_group: str = "labels", expression_group: str = "expression"):
        self.store = store
        self.labels_group = labels_group
        self.expression_group = expression_group
        self._tables: dict[str, pd.DataFrame] = {}

    def _sources(self) -> list[tuple[str, Callable[[], pd.DataFrame]]]:
        return [(self.expression_group, self._expression), ("training table", self._training)]

    def _expression(self) -> pd.DataFrame:
        if self.store.latest(self.expression_group) is None:
            return pd.DataFrame()
        return self.store.read_table(self.expression_group).drop(columns=list(KEYS), errors="ignore")

    def _training(self) -> pd.DataFrame:
        if self.store.latest(self.labels_group) is None:
            return pd.DataFrame()
        tables = [g for g in self.store.groups()
                  if g != self.labels_group and self.store.manifest(g).get("kind") != "bag"]
        return training_table(self.store, self.store.read_table(self.labels_group), groups=tables)

    def rows_for(self, features: list[str]) -> pd.DataFrame:
        """Complete rows (every feature numeric and present) of the first source holding ``features``."""
        for name, read in self._sources():
            if name not in self._tables:
                self._tables[name] = read()
            table = self._tables[name]
            if len(table) and set(features) <= set(table.columns):
                rows = table[features].apply(pd.to_numeric, errors="coerce").astype(float)
                return rows.dropna().reset_index(drop=True)
        return pd.DataFrame(columns=features)


def send_queries(client: MmrayClient, rows: StoreRows, *, n_queries: int, patients_per_query: int = 4) -> dict:
    """Send ``n_queries`` predict requests, round robin over the served models.

    Returns ``{"models": [...], "queries": [{"model", "status", "latency_ms", "risk", ...}], "errors": n}``;
    a query that could not be sent or got an error status carries ``error``.
    """
    models = client.models()
    queries: list[dict] = []
    inputs: dict[str, pd.DataFrame] = {}
    for i in range(n_queries if models else 0):
        model = models[i % len(models)]
        name = model["name"]
        if name not in inputs:
            inputs[name] = rows.rows_for(list(model["features"]))
        table = inputs[name]
        if table.empty:
            queries.append({"model": name, "status": None, "latency_ms": None, "risk": [],
                            "error": f"no store table has complete rows for its {len(model['features'])} features"})
            continue
        start = (i // len(models)) * patients_per_query % len(table)
        batch = table.iloc[start:start + patients_per_query]
        t0 = time.perf_counter()
        try:
            body = client.predict(name, batch.to_dict(orient="records"))
            entry = {"model": name, "version": body.get("version"), "status": 200, "risk": body["risk"]}
        except ServeError as e:
            entry = {"model": name, "status": e.status or None, "risk": [], "error": str(e)[:500]}
        entry["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        queries.append(entry)
        log.info("serve query %d/%d %s -> %s (%.1f ms)", i + 1, n_queries, name, entry["status"],
                 entry["latency_ms"])
    errors = sum(q["status"] != 200 for q in queries)
    return {"models": [m["name"] for m in models], "queries": queries, "errors": errors}
