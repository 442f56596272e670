"""The tile pipeline's progress arithmetic: per-slide counts, tiles/s over a window, ETA."""

from __future__ import annotations

import numpy as np
import pytest

from mmray.features.tile_pipeline import _per_slide
from mmray.features.tile_progress import ProgressCounts, estimated_total, format_eta, rate_and_eta


def test_rate_is_over_the_window_and_eta_is_rows_left_over_rate():
    samples = [(0.0, 0), (10.0, 500), (20.0, 1500)]
    rate, eta = rate_and_eta(samples, total=5000, window_s=60)
    assert rate == pytest.approx(75.0) and eta == pytest.approx(3500 / 75)  # whole span: 1500 rows in 20 s
    rate, eta = rate_and_eta(samples, total=5000, window_s=15)
    assert rate == pytest.approx(100.0) and eta == pytest.approx(35.0)  # last 10 s only
    rate, eta = rate_and_eta(samples, total=5000, window_s=1)  # window shorter than the spacing: last two
    assert rate == pytest.approx(100.0) and eta == pytest.approx(35.0)
    assert rate_and_eta(samples, total=1500) == (pytest.approx(75.0), 0.0)  # done
    assert rate_and_eta([(0.0, 0), (5.0, 0)], total=100) == (0.0, None)  # no progress: unknown, not infinite
    assert rate_and_eta(samples, total=None) == (pytest.approx(75.0), None)
    assert rate_and_eta([(0.0, 0)], total=100) == (0.0, None)


def test_total_is_extrapolated_until_every_slide_is_planned():
    assert estimated_total(rows_planned=300, slides_planned=3, n_slides=10) == pytest.approx(1000.0)
    assert estimated_total(rows_planned=1234, slides_planned=10, n_slides=10) == 1234.0
    assert estimated_total(rows_planned=0, slides_planned=0, n_slides=10) is None
    assert (format_eta(3725.4), format_eta(59.6, estimated=True), format_eta(None)) == ("1:02:05", "~0:01:00", "?")


def test_counts_per_slide_from_an_encoder_batch_and_in_the_counter():
    ids = np.array(["a", "b", "a", "a", "c"], dtype=object)
    ok = np.array([True, False, True, False, True])
    assert _per_slide(ids, ok) == {"a": [2, 1], "b": [0, 1], "c": [1, 0]}
    c = ProgressCounts()
    c.planned_rows("a", 10)
    c.planned_rows("b", 0, "slide b: no resolution")  # failed at planning: its error row is not a tile
    c.planned_rows("c", 4)
    c.encoded_rows({"a": [2, 1], "b": [0, 1], "c": [4, 0]})
    c.encoded_rows({"a": [6, 0]})
    c.written_rows({"c": 4}, {})
    s = c.snapshot()
    assert s == {"planned": 3, "complete": 1, "failed": 1, "rows_planned": 14, "rows_through": 9 + 4,
                 "rows_encoded": 12, "rows_written": 4}
    c.encoded_rows({"a": [5, 0]})  # more reports than planned rows (a retried task) never push past the plan
    assert (c.snapshot()["rows_through"], c.snapshot()["rows_encoded"]) == (14, 14)
