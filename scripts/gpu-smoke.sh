#!/usr/bin/env bash
# The GPU smoke test, for a machine with NVIDIA GPUs and package access (about 5 min of install, 3 of run):
# vLLM CUDA on SmolLM2-135M, log-prob parity with the DeepSpeed learner, two learner steps, a push through the
# native transport the GPUs allow (ipc on one GPU, nccl with two or more) and one through files, parity after each.
# Results: OUT/smoke.json (default gpu-smoke/). It has not run yet: the project has had no such machine.
#
#   bash scripts/gpu-smoke.sh [OUT]
#   CFPO_VENV   the environment it sets up (default .venv-gpu); CFPO_VLLM the vLLM package (default vllm==0.32.0)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-smoke}
VENV=${CFPO_VENV:-.venv-gpu}

driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
if [ "${driver%%.*}" -lt 580 ]; then
  echo "NVIDIA driver $driver: vLLM 0.32 and torch 2.13 are built for CUDA 13, which needs driver >= 580" >&2
  exit 1
fi
CFPO_VENV=$VENV CFPO_VLLM=${CFPO_VLLM:-vllm==0.32.0} bash scripts/setup.sh
"$VENV/bin/python" -m benchmarks.gpu_smoke "$OUT"
