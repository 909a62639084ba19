#!/usr/bin/env bash
# Local stand-ins for the public images the Dockerfiles and docker-compose.yml name, for a machine that reaches no
# container registry (this project's development machines): Python 3.11 on Debian bookworm, and Redis and
# Prometheus from Debian's packages on it. Each is made by mmdebstrap from the machine's own apt sources and
# imported into podman. Cached: an image whose fingerprint label matches what this script would make is kept.
#
#   scripts/container-bases.sh          make what is missing, then print the variables that select the stand-ins
#
# Grafana has no Debian package, so it has no stand-in: the compose test leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
SOURCES=${CFPO_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list

PYTHON_IMAGE=localhost/cfpo-standin/python:3.11-bookworm
REDIS_IMAGE=localhost/cfpo-standin/redis:bookworm
PROMETHEUS_IMAGE=localhost/cfpo-standin/prometheus:bookworm

log() { printf '\033[1m[container-bases]\033[0m %s\n' "$*" >&2; }

fingerprint() {  # what an image is made from: this script and the apt sources it reads
  cat "$0" "$SOURCES" | sha256sum | cut -d' ' -f1
}

current() {  # the fingerprint label of an image, empty when it is missing
  podman image inspect --format '{{ index .Labels "cfpo.fingerprint" }}' "$1" 2>/dev/null || true
}

# make IMAGE PACKAGES CHANGE...: a minimal bookworm with PACKAGES, imported as IMAGE with the Dockerfile CHANGEs.
make_image() {
  local image=$1 packages=$2
  shift 2
  if [ "$(current "$image")" = "$(fingerprint)" ]; then
    return
  fi
  log "making $image (about a minute)"
  local previous
  previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  local changes=(--change "LABEL cfpo.fingerprint=$(fingerprint)" --change "ENV LANG=C.UTF-8")
  for change in "$@"; do changes+=(--change "$change"); done
  mmdebstrap --quiet --variant=minbase --include="$packages" bookworm - "$SOURCES" \
    | podman import --quiet "${changes[@]}" - "$image" >/dev/null
  # The replaced image, unless an image built on it still needs it.
  [ -z "$previous" ] || podman rmi "$previous" >/dev/null 2>&1 || true
}

# As python:3.11-slim-bookworm: the interpreter, venv (with pip) and the headers a C++ extension compiles against.
make_image "$PYTHON_IMAGE" python3.11,python3.11-venv,python3.11-dev,ca-certificates 'CMD ["python3.11"]'
# As redis: redis-server and redis-cli (the health check), the append-only file under /data.
make_image "$REDIS_IMAGE" redis-server 'WORKDIR /data' 'CMD ["redis-server"]'
# As prom/prometheus: the binary as entrypoint, the TSDB under /prometheus, wget for the health check.
make_image "$PROMETHEUS_IMAGE" prometheus,wget 'WORKDIR /prometheus' 'ENTRYPOINT ["/usr/bin/prometheus"]'

cat <<EOF
CFPO_PYTHON_IMAGE=$PYTHON_IMAGE
CFPO_REDIS_IMAGE=$REDIS_IMAGE
CFPO_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
EOF
