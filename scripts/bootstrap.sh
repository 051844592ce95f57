#!/usr/bin/env bash
# Installs everything the tests and the demo need, idempotently, and fast when done before:
#   1. Debian packages: PostgreSQL, Redis, Java, Maven and Lua 5.1 (only those missing;
#      Lua runs the Argo CD health checks' tests);
#   2. the virtualenv in .venv with the package and its dev extras (redone when
#      pyproject.toml changes);
#   3. the Kafka broker's jars, the Kubernetes control plane and Helm, cached in
#      ~/.cache/jobqueue.
# Go (>= 1.26) must already be installed: Debian's golang is too old to build Kubernetes.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

say() { printf '==> %s\n' "$*" >&2; }

# 1. Debian packages, installed only when a program is missing.
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v lua5.1 >/dev/null || missing+=(lua5.1)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
    echo "error: need the Debian packages ${missing[*]}; install them as root" >&2
    exit 1
  fi
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null; then
  echo "error: Go >= 1.26 is needed to build the Kubernetes control plane; install it first" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: $PYTHON is older than Python 3.11" >&2
  exit 1
fi

# 2. The virtualenv, reinstalled only when the dependencies change.
stamp="$VENV/.jobqueue-installed"
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
  say "installing the Python environment in $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev]'
  echo "$wanted" >"$stamp"
fi

# 3. Cached downloads and builds; each prints where it put its result.
say "Kafka broker jars: $(bash scripts/fetch-kafka.sh)"
say "Kubernetes control plane (the first build takes a while): $(bash scripts/build-control-plane.sh)"
say "Helm: $(bash scripts/build-helm.sh)"
