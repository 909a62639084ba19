#!/usr/bin/env bash
# The GPU smoke test, for a machine with NVIDIA GPUs and package access (about 5 min of install, 3 of run):
# vLLM CUDA on SmolLM2-135M, log-prob parity with the DeepSpeed learner, two learner steps, a push through the
# native transport the GPUs allow (ipc on one GPU, nccl with two or more) and one through files, parity after each.
# Results: OUT/smoke.json (default gpu-smoke/). It has not run yet: the project has had no such machine.
#
# Runs as any user: it installs no system packages (CFPO_SYSTEM_PACKAGES=0; the smoke test needs none of them) and
# takes the first Python >= 3.11 it finds, the project's own 3.11 first.
#
#   bash scripts/gpu-smoke.sh [OUT]
#   CFPO_VENV   the environment it sets up (default .venv-gpu); CFPO_VLLM the vLLM package (default vllm==0.32.0)
#   CFPO_PYTHON the Python to build it with (default: python3.11, python3.12, python3.13, python3, the first >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-smoke}
VENV=${CFPO_VENV:-.venv-gpu}

driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
if [ "${driver%%.*}" -lt 580 ]; then
  echo "NVIDIA driver $driver: vLLM 0.32 and torch 2.13 are built for CUDA 13, which needs driver >= 580" >&2
  exit 1
fi

usable() { command -v "$1" >/dev/null && "$1" -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
PYTHON=${CFPO_PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if usable "$candidate"; then PYTHON=$candidate && break; fi
  done
fi
if [ -z "$PYTHON" ] || ! usable "$PYTHON"; then
  echo "no Python >= 3.11 with venv here (Debian and Ubuntu put it in python3.X-venv); name one in CFPO_PYTHON" >&2
  exit 1
fi
# The project pins 3.11, the version its CPU environment is checked with; vLLM's own image runs it on 3.12 as well
# (deploy/docker/Dockerfile.gpu), so another version installs past the pin, as there.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  export PIP_IGNORE_REQUIRES_PYTHON=1
fi
CFPO_VENV=$VENV CFPO_VLLM=${CFPO_VLLM:-vllm==0.32.0} CFPO_PYTHON=$PYTHON CFPO_SYSTEM_PACKAGES=0 bash scripts/setup.sh
"$VENV/bin/python" -m benchmarks.gpu_smoke "$OUT"
