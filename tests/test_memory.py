"""Process memory from /proc: peak RSS, its reset, and a process tree's peaks (what the scale benchmarks read)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mmray import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_peak_rss_rises_with_an_allocation_and_resets():
    if not memory.reset_peak_rss():
        pytest.skip("this kernel does not allow clearing the peak RSS")
    before = memory.peak_rss_bytes()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
    assert memory.peak_rss_bytes() >= before + 60 * 2**20
    del block
    assert memory.reset_peak_rss()
    assert memory.peak_rss_bytes() < before + 30 * 2**20
    assert memory.mib(3 * 2**20) == 3.0 and memory.mib(None) is None


def test_tree_peaks_sees_children_and_their_peaks():
    code = "import numpy as np, time; a = np.ones(80 * 2**20, np.uint8); time.sleep(1.0)"
    proc = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                                                   f"{code!r}])"])
    watch = memory.TreePeaks(proc.pid, interval_s=0.1).start()
    proc.wait()
    watch.stop()
    rows = watch.table()
    assert rows[0]["peak_rss_mib"] >= 80 and rows[0]["pid"] != proc.pid  # the grandchild holds the 80 MiB
    assert any(r["kind"] == "driver" and r["pid"] == proc.pid for r in rows)
