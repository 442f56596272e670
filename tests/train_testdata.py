"""A tiny feature store with planted signal, written straight from :func:`mmray.synth.arrays.simple_cohort`.

Groups: ``labels`` (patient_id, event_time, time_days, event, subtype, subtype_code), one table group per
modality (``clinical``, ``expression``, ``radiomics``; rows only for patients who have it) and, with
``tile_dim``, the ``wsi_tiles`` bag group (one slide per patient, keyed by ``slide_id``, ``embedding``
list<float32>, tile coordinates) in the layout the WSI stage writes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.store import FeatureStore
from mmray.synth.arrays import simple_cohort

WHEN = pd.Timestamp("2020-01-01", tz="UTC")
SUBTYPES = ("adeno", "squamous", "large")


def write_tiny_store(path, *, n: int = 60, seed: int = 0, dims: dict | None = None, tile_dim: int | None = None,
                     effect: float = 1.2, p_missing: float = 0.2):
    c = simple_cohort(n, seed=seed, dims=dims or {"clinical": 3, "expression": 10, "radiomics": 4},
                      effect=effect, p_missing=p_missing, tile_dim=tile_dim, tiles=(2, 9))
    st = FeatureStore(str(path))
    labels = pd.DataFrame({"patient_id": c.patient_ids, "event_time": WHEN, "time_days": c.time_days,
                           "event": c.event.astype(np.int64), "subtype": [SUBTYPES[s] for s in c.subtype],
                           "subtype_code": c.subtype.astype(np.int64)})
    st.write_table("labels", labels)
    for m, x in c.features.items():
        keep = c.present[m]
        frame = pd.DataFrame(x[keep], columns=[col.split("__", 1)[1] for col in c.columns[m]])
        frame.insert(0, "patient_id", np.asarray(c.patient_ids)[keep])
        frame.insert(1, "event_time", WHEN)
        st.write_table(c.columns[m][0].split("__", 1)[0], frame)
    if tile_dim:
        rows = []
        for pid, bag in zip(c.patient_ids, c.bags):
            if bag is None or len(bag) == 0:
                continue
            for k, emb in enumerate(bag):
                rows.append({"slide_id": f"{pid}-S1", "patient_id": pid, "event_time": WHEN, "x": 256 * k, "y": 0,
                             "tile_px": 256, "embedding": emb.astype(np.float32).tolist()})
        st.write_table("wsi_tiles", pd.DataFrame(rows), kind="bag", bag_key="slide_id")
    return st, c
