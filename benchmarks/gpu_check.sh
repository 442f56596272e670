#!/usr/bin/env bash
# One prepared check for a machine with a CUDA GPU (issue #17), under 8 minutes in all:
#
#   1. the CUDA tests:  pytest -m gpu  (tile encoder autocast/channels_last/device normalisation on the GPU
#      against CPU fp32; models on GPU like on CPU; a Ray Train fit over NCCL)
#   2. bench_tiles with resnet50_trunc at 224 px: the Ray Data pipeline against the encoder alone on that GPU
#      (encoder_alone.mmray_fraction: the goal is >= 0.8 with one GPU, one actor)
#   3. bench_pretrain on one GPU, when benchmarks/bench_pretrain.py exists (skipped with a message otherwise)
#
# Every result lands in one folder:  gpu.txt (nvidia-smi), tests.xml + tests.log, tiles.json + tiles.log,
# pretrain.json + pretrain.log, summary.json (each step: exit status, seconds, skipped and why).
#
#   benchmarks/gpu_check.sh [OUT_DIR]        default OUT_DIR: gpu_check_out/<UTC time>
#   benchmarks/gpu_check.sh --dry-run [OUT]  no GPU needed: checks this script's steps (each benchmark's
#                                            arguments, the tests it would collect) and writes summary.json
#
# Environment: PYTHON (default .venv/bin/python; `make setup` first on a fresh machine), GPU_TESTS (pytest
# paths, default tests), TESTS_TIMEOUT_S (150), TILES_TIMEOUT_S (200), PRETRAIN_TIMEOUT_S (110),
# TILES_SLIDES (3), TILES_REPEAT (4).
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-gpu_check_out/$(date -u +%Y%m%dT%H%M%SZ)}"
PY="${PYTHON:-.venv/bin/python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
mkdir -p "$OUT"
STEPS="$OUT/.steps"
: > "$STEPS"
START=$(date +%s)

if [[ ! -x "$PY" ]]; then
    echo "gpu_check: $PY not found; run 'make setup' first (or set PYTHON)" >&2
    exit 1
fi

record() {  # name rc seconds note
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS"
    printf 'gpu_check: %-9s rc=%s  %ss  %s\n' "$1" "$2" "$3" "$4"
}

step() {  # name timeout_s log command...
    local name=$1 limit=$2 log=$3; shift 3
    local t0=$SECONDS rc
    echo "gpu_check: $name ($(printf '%q ' "$@"| cut -c1-160)) ..."
    if declare -F "$1" > /dev/null; then  # a function of this script (dry-run checks)
        "$@" > "$log" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    fi
    rc=$?
    local note=""
    [[ $rc -eq 124 || $rc -eq 137 ]] && note="timed out after ${limit}s"
    record "$name" "$rc" "$((SECONDS - t0))" "$note"
    tail -n 3 "$log" | sed 's/^/    /'
}

if [[ $DRY -eq 0 ]]; then
    if ! nvidia-smi > "$OUT/gpu.txt" 2>&1; then
        record gpu 2 0 "no CUDA GPU here (nvidia-smi failed); nothing to check — use --dry-run to test the script"
        "$PY" - "$OUT" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1] + "/.steps")]
json.dump({"steps": [{"step": r[0], "rc": int(r[1]), "seconds": int(r[2]), "note": r[3]} for r in rows],
           "gpu": None}, open(sys.argv[1] + "/summary.json", "w"), indent=1)
EOF
        exit 2
    fi
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1 \
        || { record gpu 2 0 "torch sees no CUDA device (CPU-only torch wheel?)"; exit 2; }
fi

check_flags() {  # dry run: the benchmark parses its arguments (--help) and knows every flag we pass
    local script=$1; shift
    local help
    help=$("$PY" "$script" --help 2>&1) || { echo "$help"; return 1; }
    for a in "$@"; do
        if [[ $a == --* ]] && ! grep -q -- "$a" <<< "$help"; then echo "$script has no option $a"; return 1; fi
    done
    echo "$script accepts: $*"
}

# 1. CUDA tests
read -r -a TEST_PATHS <<< "${GPU_TESTS:-tests}"
if [[ $DRY -eq 1 ]]; then
    step tests 120 "$OUT/tests.log" "$PY" -m pytest -q -m gpu --collect-only -p no:cacheprovider "${TEST_PATHS[@]}"
else
    step tests "${TESTS_TIMEOUT_S:-150}" "$OUT/tests.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        --junitxml="$OUT/tests.xml" "${TEST_PATHS[@]}"
fi

# 2. tile pipeline vs encoder alone, resnet50_trunc at 224 px on the GPU
TILES_ARGS=(--json "$OUT/tiles.json" --encoder resnet50_trunc --input-px 224 --batch-size 128 --pool-size 1
            --actor-cpus 1 --slides "${TILES_SLIDES:-3}" --repeat "${TILES_REPEAT:-4}" --trials 1)
if [[ $DRY -eq 1 ]]; then
    step tiles 120 "$OUT/tiles.log" check_flags benchmarks/bench_tiles.py "${TILES_ARGS[@]}"
else
    step tiles "${TILES_TIMEOUT_S:-200}" "$OUT/tiles.log" "$PY" benchmarks/bench_tiles.py "${TILES_ARGS[@]}"
fi

# 3. encoder pretraining on one GPU (benchmarks/bench_pretrain.py comes with the pretraining work)
if [[ -f benchmarks/bench_pretrain.py ]]; then
    help=$("$PY" benchmarks/bench_pretrain.py --help 2>&1)
    args=(--json "$OUT/pretrain.json")
    grep -q -- "--gpus" <<< "$help" && args+=(--gpus 1)
    grep -q -- "--use-gpu" <<< "$help" && args+=(--use-gpu)
    if [[ $DRY -eq 1 ]]; then
        step pretrain 120 "$OUT/pretrain.log" check_flags benchmarks/bench_pretrain.py "${args[@]}"
    else
        step pretrain "${PRETRAIN_TIMEOUT_S:-110}" "$OUT/pretrain.log" "$PY" benchmarks/bench_pretrain.py "${args[@]}"
    fi
else
    record pretrain 0 0 "skipped: benchmarks/bench_pretrain.py does not exist in this checkout"
fi

"$PY" - "$OUT" "$DRY" "$(( $(date +%s) - START ))" <<'EOF'
import json, os, sys
out, dry, total = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, ".steps"))]
summary = {"dry_run": dry, "total_s": total, "budget_s": 480,
           "steps": [{"step": r[0], "rc": int(r[1]), "seconds": int(r[2]), "note": r[3]} for r in rows],
           "results": sorted(f for f in os.listdir(out) if f.endswith(".json") and f != "summary.json")}
tiles = os.path.join(out, "tiles.json")
if os.path.exists(tiles):
    t = json.load(open(tiles))
    alone = t.get("encoder_alone", {})
    summary["tiles"] = {"pipeline_tiles_per_s": t.get("mmray", {}).get("tiles_per_s"),
                        "encoder_alone_tiles_per_s": alone.get("tiles_per_s"),
                        "pipeline_fraction_of_encoder_alone": alone.get("mmray_fraction"),
                        "goal": ">= 0.8", "gpu": t.get("machine", {}).get("gpu")}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
EOF
rm -f "$STEPS"
if grep -q '"rc": [1-9]' "$OUT/summary.json"; then exit 1; fi
exit 0
