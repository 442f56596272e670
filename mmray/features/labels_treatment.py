"""Treatment labels from the clinical table: categorical response and binary toxicities.

* ``response`` (text) and ``response_code`` (Int64): the class index in
  ``labels.response_classes`` order when given (other values: null, noted),
  else the values sorted as text.  A missing cell leaves both null.
* ``toxicity_<column>`` (Int8 0/1) for each column of ``labels.toxicity``:
  1 where the cell equals ``labels.toxicity_value`` (compared as text, so
  ``1`` and ``1.0`` match), 0 for any other present value, null when
  missing.  A toxicity column whose present values do not include
  ``toxicity_value`` at all, or that holds more than two values, stops the
  ingest with a :class:`~mmray.errors.CohortError` naming file and column.

Missing treatment labels never drop a patient's row: survival and subtype
labels stay usable, and a multi-task model skips the missing ones.
"""

from __future__ import annotations

import pandas as pd

from mmray.errors import CohortError
from mmray.features.clinical import missing_mask
from mmray.features.labels import coded_labels, same_value

TOXICITY_PREFIX = "toxicity_"


def treatment_labels(frame: pd.DataFrame, out: pd.DataFrame, *, spec, missing_values, labels, table) -> None:
    """Add the response and toxicity columns of ``spec`` to ``out`` (rows of ``frame``), in place."""
    if spec.response:
        out["response"], out["response_code"], labels.response_mapping = coded_labels(
            frame[spec.response], classes=spec.response_classes, missing_values=missing_values, notes=labels.notes,
            what="response", classes_key="labels.response_classes", column=spec.response)
    for col in spec.toxicity:
        raw = frame[col].astype(str).str.strip()
        present = ~missing_mask(raw, missing_values)
        values = sorted(set(raw[present]))
        where = f"{table.name}, column {col!r} (labels.toxicity)"
        if not any(same_value(v, spec.toxicity_value) for v in values):
            raise CohortError(f"{where}: labels.toxicity_value {spec.toxicity_value!r} matches no value (the "
                              f"column holds {values[:6]}); set labels.toxicity_value to the value that means "
                              f"the toxicity happened")
        if len(values) > 2:
            raise CohortError(f"{where}: {len(values)} different values {values[:6]}; a toxicity column is binary "
                              f"({spec.toxicity_value!r} and one other value); list extra values in "
                              f"tables.clinical.missing_values")
        hit = [1 if same_value(v, spec.toxicity_value) else 0 for v in raw]
        out[TOXICITY_PREFIX + col] = pd.array([h if p else None for h, p in zip(hit, present)], dtype="Int8")
        if (~present).any():
            labels.notes.append(f"{int((~present).sum())} patient(s) have no {col!r} (toxicity label) value")
