"""Fixtures for the feature store tests: a store on each backend, seeded data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmray.store import FeatureStore


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])  # s3: a server process
def store_uri(request, tmp_path) -> str:
    """A fresh store location: a local folder, or a prefix on the S3 server process."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_env")


@pytest.fixture
def store(store_uri) -> FeatureStore:
    return FeatureStore(store_uri)


def expression_frame(*, seed: int = 0, patients: int = 6, times: int = 2) -> pd.DataFrame:
    """(patients * times) rows: patient_id, event_time (date strings), 3 genes."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        for t in range(times):
            rows.append({"patient_id": f"P{p:03d}", "event_time": f"202{t}-0{1 + p % 9}-15",
                         "MKI67": rng.normal(), "ESR1": rng.normal(), "ERBB2": rng.normal()})
    return pd.DataFrame(rows)


def tiles_frame(*, seed: int = 0, slides: int = 4, dim: int = 8) -> pd.DataFrame:
    """Tile embeddings: a different number of tiles per slide, shuffled rows."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(slides):
        n = 3 + 2 * s
        parts.append(pd.DataFrame({
            "slide_id": f"S{s:02d}", "patient_id": f"P{s // 2:03d}",
            "event_time": pd.Timestamp("2021-01-01") + pd.Timedelta(days=30 * s),
            "scale": 0, "x": np.arange(n) * 256, "y": np.zeros(n, dtype=np.int64),
            "tile_px": 256, "mpp": 0.5,
            "embedding": list(rng.normal(size=(n, dim)).astype(np.float32)),
        }))
    df = pd.concat(parts, ignore_index=True)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture
def make_expression():
    return expression_frame


@pytest.fixture
def make_tiles():
    return tiles_frame
