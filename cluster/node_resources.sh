#!/usr/bin/env bash
# Prints the custom Ray resources of this machine as JSON, for `ray start --resources`:
# every node offers `ingest_cpu` (one per core); machines with an NVIDIA GPU also offer
# `wsi_gpu`, so slide-encoder actor pools land on them.
set -euo pipefail
cores=$(nproc)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L | wc -l)
  echo "{\"ingest_cpu\": ${cores}, \"wsi_gpu\": ${gpus}}"
else
  echo "{\"ingest_cpu\": ${cores}}"
fi
