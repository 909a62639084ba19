#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the learner in bf16 under ZeRO-0 and ZeRO-3, the export gather, log-prob
# parity and the launcher, on a GPU box that has PyTorch and transformers but no registry (the device machine).
#
#   bash scripts/gpu-check.sh wheels   # here: the few packages that box lacks, as wheels in .whl/ (a few MB)
#   bash scripts/gpu-check.sh run OUT  # there: installs .whl/ into /tmp/site, checks on CUDA, writes OUT/
#   bash scripts/gpu-check.sh cpu OUT  # anywhere with the project's .venv: the same checks on small shapes
#
# The box's image (PyTorch 2.11, transformers 5.17, Python 3.12) lacks DeepSpeed (pure Python: built here as a
# wheel), pydantic and hjson; it has rich, typer, httpx, msgpack, ninja, psutil, py-cpuinfo and nvidia-ml-py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CFPO_VENV:-.venv}
WHEELS=.whl

case "${1:-}" in
  wheels)
    mkdir -p "$WHEELS"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    version() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    DS_BUILD_OPS=0 "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" \
      "deepspeed==$(version deepspeed)"
    "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
      "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
      "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
      "hjson==$(version hjson)"
    du -sh "$WHEELS"
    ;;
  run)
    OUT=${2:?usage: gpu-check.sh run OUT}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --device cuda --out "$OUT"
    ;;
  cpu)
    OUT=${2:?usage: gpu-check.sh cpu OUT}
    PYTHONUNBUFFERED=1 "$VENV/bin/python" -m benchmarks.gpu_check --device cpu --out "$OUT"
    ;;
  *)
    echo "usage: bash scripts/gpu-check.sh wheels | run OUT | cpu OUT" >&2
    exit 2
    ;;
esac
