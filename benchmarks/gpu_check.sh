#!/usr/bin/env bash
# One prepared GPU check (untested: no GPU was lent to the session that wrote it). Fits a 15-minute device budget:
# inference and a training step of the paper model, plain float32 against bf16 autocast + channels-last
# (+ torch.compile), each measurement in its own process, plus the attention sweep on the GPU.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
OUT="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
# 1. eager: baseline vs bf16 + channels-last (no compile), inference batch 16, training batch 12 (the paper's batch).
timeout 300 "$PY" -m perspective_unet benchmark --device cuda --mode inference train --batch-size 16 \
  --train-batch-size 12 --runs 20 --warmup 5 --amp bfloat16 --checkpoint \
  --json "$OUT/cuda_bf16.json" --markdown "$OUT/cuda_bf16.md" || echo "bf16 run failed"
# 2. the same with torch.compile on the optimized path (compilation is excluded from the timing by the warm-up).
timeout 360 "$PY" -m perspective_unet benchmark --device cuda --mode inference train --batch-size 16 \
  --train-batch-size 12 --runs 20 --warmup 5 --amp bfloat16 --compile --checkpoint --path optimized --no-fidelity \
  --json "$OUT/cuda_bf16_compile.json" --markdown "$OUT/cuda_bf16_compile.md" || echo "compile run failed"
# 3. attention kernels on the GPU (exact attention stays linear in memory through SDPA's fused kernels).
timeout 120 "$PY" -m perspective_unet benchmark attention --device cuda --scsi-sizes 224 448 \
  --json "$OUT/cuda_attention.json" --markdown "$OUT/cuda_attention.md" || echo "attention run failed"
