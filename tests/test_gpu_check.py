"""benchmarks/gpu_check.sh, the prepared GPU check, on a machine without a GPU: syntax, dry run, skip paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
FAKE_BENCH = """import argparse, json
p = argparse.ArgumentParser()
p.add_argument("--json"){extra}
a = p.parse_args()
json.dump({{"ok": True}}, open(a.json, "w"))
"""


def _copy(tmp_path: Path, *, pretrain: bool) -> Path:
    """The script in a scratch checkout with stand-in benchmarks (the real ones need a GPU and minutes)."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "gpu_check.sh")
    tiles = "".join(f'\np.add_argument("--{f}")' for f in
                    ("encoder", "input-px", "batch-size", "pool-size", "actor-cpus", "slides", "repeat", "trials"))
    (tmp_path / "benchmarks" / "bench_tiles.py").write_text(FAKE_BENCH.format(extra=tiles))
    if pretrain:
        (tmp_path / "benchmarks" / "bench_pretrain.py").write_text(
            FAKE_BENCH.format(extra='\np.add_argument("--gpus", type=int)'))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_gpu():\n    pass\n\ndef test_cpu():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    return tmp_path / "benchmarks" / "gpu_check.sh"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_TESTS": "tests"}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.parametrize("pretrain", [True, False])
def test_dry_run_checks_every_step_and_writes_one_summary(tmp_path, pretrain):
    script = _copy(tmp_path, pretrain=pretrain)
    out = tmp_path / "out"
    proc = _run(script, "--dry-run", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert summary["dry_run"] and set(steps) == {"tests", "tiles", "pretrain"}
    assert all(s["rc"] == 0 for s in steps.values())
    assert "test_gpu" in (out / "tests.log").read_text() and "test_cpu" not in (out / "tests.log").read_text()
    assert "--encoder resnet50_trunc --input-px 224" in (out / "tiles.log").read_text()
    if pretrain:
        assert "--gpus 1" in (out / "pretrain.log").read_text()
    else:
        assert "does not exist" in steps["pretrain"]["note"]


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    script = _copy(tmp_path, pretrain=False)
    proc = _run(script, str(tmp_path / "out"))
    assert proc.returncode == 2
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"][0]["step"] == "gpu" and "no CUDA GPU" in summary["steps"][0]["note"]
