#!/usr/bin/env bash
# Builds Helm v4 from the Go module proxy, at a pinned release, for the chart's tests.
#
# helm.sh/helm/v4 has no replace directives, so `go install module@version` builds it
# without a wrapper module (unlike Kubernetes, see build-control-plane.sh). The pinned
# release must declare a `go` directive this machine's Go accepts: v4.3.2 asks for 1.26.0.
#
# The binary lands in $JQ_CACHE_DIR/helm/<version>/bin (default cache dir: ~/.cache/jobqueue).
# A stamp file marks a finished build, so later runs print the directory and return at once.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
CACHE_DIR="${JQ_CACHE_DIR:-$HOME/.cache/jobqueue}"
OUT="$CACHE_DIR/helm/$HELM_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.built"

if [[ -f "$STAMP" && -x "$BIN/helm" ]]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "error: go is not installed (need Go >= 1.26)" >&2; exit 1; }

# GOTOOLCHAIN=local refuses to download another Go: a release that needs a newer one fails
# here with a clear message instead of fetching a toolchain behind the user's back.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$BIN"
# Helm reads its own version from this variable; without it `helm version` says "v4.0+unknown".
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
GOBIN="$BIN" go install -p 2 -trimpath -ldflags "$ldflags" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
touch "$STAMP"
echo "$BIN"
