"""Clinical table -> feature groups ``labels`` and ``clinical``, plus leakage and bias reports.

* ``labels``: ``patient_id, event_time`` (the index date, or UNDATED),
  ``time_days`` (float64), ``event`` (int8 0/1 from ``event == event_value``),
  ``subtype`` (text) and ``subtype_code`` (int64, mapping in the manifest's
  params); only the label columns the cohort names.
* ``clinical``: ``patient_id, event_time`` plus the encoded features
  (:mod:`mmray.features.clinical`; float32, NaN where missing, with
  ``<col>__missing`` indicators).  Never a label, id, date or named leaking
  column.

Rows: a row with the wrong number of fields, an empty id or an id seen
before is a failure and is skipped; a bad label cell drops the patient's
label row only (:mod:`mmray.features.labels`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.config import to_dict
from mmray.errors import CohortError
from mmray.features.clinical import drop_not_collected, encode_clinical, missing_mask, parse_dates
from mmray.features.labels import build_labels
from mmray.features.table_io import read_any_table, row_failure
from mmray.ingest.report import ModalityReport
from mmray.ingest.tables_common import Scrubber, feature_frame, finish, key_fingerprint, log, up_to_date, write_group
from mmray.report import bias as bias_mod
from mmray.report import leakage as leakage_mod
from mmray.report import render
from mmray.store.keys import UNDATED


def _rows(table, id_column: str, report: ModalityReport) -> tuple[np.ndarray, list[dict]]:
    """Keep-mask over rows (ids present and first of their kind) and the failures."""
    failures = []
    for row in table.bad_rows:
        failures.append(row_failure(path=table.path, line=row["line"], reason=table.bad_row_reason(row),
                                    patient_id=str(row["fields"].get(id_column, "")).strip() or None))
    ids = table.frame[id_column].astype(str).str.strip()
    keep = np.ones(len(ids), dtype=bool)
    seen: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if not pid:
            failures.append(table.failure(i, column=id_column, value="", reason="the patient id is empty; row skipped"))
            keep[i] = False
        elif pid in seen:
            failures.append(table.failure(i, column=id_column, value=pid, patient_id=pid,
                                          reason=f"patient id {pid!r} already on line {seen[pid]}; row skipped"))
            keep[i] = False
        else:
            seen[pid] = int(table.lines[i])
    report.n_items = len(ids) + len(table.bad_rows)
    return keep, failures


def ingest_clinical(ctx) -> ModalityReport:
    cohort, cfg = ctx.cohort, ctx.config
    ref, spec = cohort.spec.clinical, cohort.spec.labels
    path = cohort.part_path("clinical")
    report = ModalityReport("clinical")
    params = {"id_column": ref.id_column, "clinical": to_dict(cfg.clinical),
              "patient_ids": key_fingerprint(ctx.patient_key), "labels": to_dict(spec) if spec else None}
    groups = ["clinical"] + (["labels"] if spec else [])
    if not ctx.force and all(up_to_date(ctx.store, g, sources=[path], params=params, patient_key=ctx.patient_key)
                             for g in groups):
        report.n_skipped = report.n_items = ctx.store.manifest("clinical")["num_rows"]
        report.notes.append("clinical and labels already ingested from this clinical table with these settings "
                            "(--force recomputes)")
        return report
    table = read_any_table(path, what="clinical", fmt=ref.format)
    if ref.id_column not in table.frame.columns:
        raise CohortError(f"{table.name}: no id column {ref.id_column!r}; set clinical.id_column to one of "
                          f"{table.header}")
    log.info("clinical: %d rows x %d columns from %s", len(table.frame), len(table.header), table.name)
    keep, failures = _rows(table, ref.id_column, report)
    all_ids = set(table.frame[ref.id_column].astype(str).str.strip())
    all_ids |= {str(r["fields"].get(ref.id_column, "")).strip() for r in table.bad_rows}
    scrub = Scrubber(ctx.patient_key, all_ids - {""})  # every id of the file, skipped rows' too
    notes: list[str] = []
    not_collected, more = drop_not_collected(table, cfg.clinical)
    notes += more
    keep &= not_collected
    table.frame, table.lines = table.frame[keep].reset_index(drop=True), table.lines[keep]
    ids = table.frame[ref.id_column].astype(str).str.strip()

    exclude = {ref.id_column: "id (clinical.id_column)"}
    labels = None
    if spec:
        label_cols = {getattr(spec, f): f"label (labels.{f})"
                      for f in ("time_days", "event", "subtype", "index_date", "response") if getattr(spec, f)}
        label_cols.update({c: "label (labels.toxicity)" for c in spec.toxicity})
        exclude.update(label_cols)
        labels = build_labels(table, spec=spec, missing_values=cfg.clinical.missing_values,
                              subtype_classes=cfg.clinical.subtype_classes)
        failures += labels.failures
        notes += labels.notes
    for col in table.frame.columns:  # a column holding patient ids is never a feature (nor a way around pseudonyms)
        if col not in exclude and scrub.contains_ids(table.frame[col]):
            exclude[col] = "holds patient identifiers"
            notes.append(f"{col!r} holds patient identifiers; not a feature")
    enc = encode_clinical(table, cfg=cfg.clinical, exclude=exclude)
    failures += enc.failures
    notes += enc.notes

    index_dates = None
    if spec and spec.index_date:
        raw = table.frame[spec.index_date].astype(str)
        index_dates = parse_dates(raw.where(~missing_mask(raw, cfg.clinical.missing_values), ""))
    times = index_dates.fillna(UNDATED) if index_dates is not None else pd.Series([UNDATED] * len(ids))
    features = enc.features.set_axis(ids.to_numpy())
    write_group(ctx, report, "clinical", feature_frame(features, patient_key=ctx.patient_key, event_times=times),
                sources=[path], params={**params, "columns": enc.kinds, "one_hot_levels": enc.levels})
    report.n_done = len(ids)
    if labels is not None:
        lab = labels.frame
        frame = pd.concat([pd.DataFrame({"patient_id": [ctx.patient_key(p) for p in ids.iloc[lab.index]]}),
                           lab.reset_index(drop=True)], axis=1)
        write_group(ctx, report, "labels", frame, sources=[path],
                    params={**params, "subtype_mapping": labels.subtype_mapping,
                            **({"response_mapping": labels.response_mapping} if labels.response_mapping else {})})
        _reports(ctx, table, labels, exclude=exclude, index_dates=index_dates, notes=notes, kinds=enc.kinds)
    by_line = dict(zip(table.lines.tolist(), ids))
    failures = [f if f.get("patient_id") or f.get("line") not in by_line else {**f, "patient_id": by_line[f["line"]]}
                for f in failures]
    return finish(report, scrub, failures, notes, ctx.patient_key, files=[path])


def _reports(ctx, table, labels, *, exclude, index_dates, notes: list[str], kinds: dict) -> None:
    rcfg, missing = ctx.config.reports, ctx.config.clinical.missing_values
    lab = labels.frame
    if lab.empty:
        notes.append("no labelled patient: leakage and bias reports skipped")
        return
    if rcfg.leakage.enabled and ({"event", "subtype_code"} & set(lab.columns)):
        rep = leakage_mod.leakage_report(table.frame, labels=lab, exclude=set(exclude), index_dates=index_dates,
                                         missing_values=missing, cfg=rcfg.leakage)
        where = render.write_report(ctx.store, "leakage", rep, leakage_mod.leakage_html(rep))
        kept = [c for c in rep["flagged"] if not str(kinds.get(c, "")).startswith(("leaking", "date", "dropped"))]
        notes.append(f"leakage report: {len(rep['flagged'])} column(s) flagged "
                     f"({', '.join(rep['flagged']) or 'none'}); {where['html']}")
        if kept:
            notes.append(f"flagged as leaking but still a clinical feature: {', '.join(kept)}; add them to "
                         f"tables.clinical.leaking_columns")
    if rcfg.bias.enabled:
        rep = bias_mod.bias_report(table.frame, labels=lab, cfg=rcfg.bias, missing_values=missing,
                                   subtype_mapping=labels.subtype_mapping)
        where = render.write_report(ctx.store, "bias", rep, bias_mod.bias_html(rep))
        notes.append(f"bias report over {', '.join(a['attribute'] for a in rep['attributes']) or 'no attribute'}: "
                     f"{where['html']}")
