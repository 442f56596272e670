"""Prior knowledge -> the store's knowledge tables (:mod:`mmray.store.knowledge`).

* ``interactions`` (cohort part ``interactions``; :mod:`mmray.features.interactions`):
  ``source, target, type, score``, filtered by ``tables.knowledge.types`` and
  ``min_score``.  The graph model (``mm_gnn``) builds its prior edges from it.
* ``gene_sets`` (cohort part ``signatures``, a GMT): ``set_name, description,
  gene``, one row per member.  Training reads it to test the enrichment of a
  model's most important genes without the cohort files.

Neither holds a patient; lineage (checksums, source labels) is recorded as
for feature groups, and a rerun on unchanged files with unchanged settings
is skipped.
"""

from __future__ import annotations

import pandas as pd

from mmray.config import to_dict
from mmray.features.gmt import read_gmt
from mmray.features.interactions import read_interactions
from mmray.ingest.report import ModalityReport
from mmray.ingest.tables_common import Scrubber, described_sources, finish, key_fingerprint, log
from mmray.ingest.tables_config import TablesConfig
from mmray.store.knowledge import knowledge_meta, write_knowledge

CONFIG = TablesConfig


def _current(store, name: str, sources: list[dict], params: dict) -> bool:
    meta = knowledge_meta(store, name)
    if meta is None:
        return False
    same = {(s["uri"], s.get("sha256") or s.get("etag")) for s in meta.get("sources", [])}
    return same == {(s["uri"], s.get("sha256") or s.get("etag")) for s in sources} and meta.get("params") == params


def ingest_knowledge(ctx) -> ModalityReport:
    cohort, cfg = ctx.cohort, ctx.config.knowledge
    report = ModalityReport("knowledge")
    failures, notes, files = [], [], []
    params = {"knowledge": to_dict(cfg), "patient_ids": key_fingerprint(ctx.patient_key)}
    parts = [("interactions", cohort.part_path("interactions")), ("gene_sets", cohort.part_path("signatures"))]
    for name, path in parts:
        if path is None:
            continue
        files.append(path)
        sources = described_sources([path], ctx.patient_key)
        report.n_items += 1
        if not ctx.force and _current(ctx.store, name, sources, params):
            report.n_skipped += 1
            notes.append(f"{name} already in the store from this file with these settings (--force recomputes)")
            continue
        if name == "interactions":
            frame, problems, more = read_interactions(path, fmt=cohort.spec.interactions.format
                                                      if cohort.spec.interactions.format in ("csv", "tsv", "parquet")
                                                      else "auto")
            n = len(frame)
            if cfg.types:
                frame = frame[frame["type"].isin(cfg.types)]
            if cfg.min_score > 0:
                frame = frame[~(frame["score"] < cfg.min_score)]
            if len(frame) < n:
                more.append(f"interactions: {n - len(frame)} of {n} edge(s) left out by tables.knowledge "
                            f"(types {list(cfg.types) or 'all'}, min_score {cfg.min_score})")
            counts = frame["type"].value_counts().to_dict()
            more.append(f"interactions: {len(frame)} edge(s) kept ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        else:
            sets, problems = read_gmt(path)
            frame = pd.DataFrame([{"set_name": s.name, "description": s.description, "gene": g}
                                  for s in sets.values() for g in s.genes])
            more = [f"gene_sets: {len(sets)} set(s), {frame['gene'].nunique()} distinct gene(s)"]
        failures += problems
        notes += more
        version = write_knowledge(ctx.store, name, frame.reset_index(drop=True), sources=sources, params=params)
        report.groups[f"_knowledge/{name}"] = version
        report.n_done += 1
        log.info("knowledge: wrote %s@%s (%d rows)", name, version, len(frame))
    return finish(report, Scrubber(ctx.patient_key, ()), failures, notes, ctx.patient_key, files=files)
