#!/usr/bin/env bash
# Builds the Kubernetes control plane the local environment runs: etcd, kube-apiserver,
# kube-controller-manager and kubectl, from the Go module proxy, at pinned releases.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod requires the staging modules
# (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 with local replace directives. A small
# wrapper module requires the release and replaces each staging module with its published
# v0.<minor>.<patch> twin. etcd's server module has replace directives too, so it gets a
# wrapper of its own.
#
# The binaries land in $JQ_CACHE_DIR/control-plane/<k8s version>/bin (default cache dir:
# ~/.cache/jobqueue). A stamp file marks a finished build, so later runs return at once.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"
CACHE_DIR="${JQ_CACHE_DIR:-$HOME/.cache/jobqueue}"
OUT="$CACHE_DIR/control-plane/$KUBE_VERSION-etcd-$ETCD_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.built"

if [[ -f "$STAMP" ]]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "error: go is not installed (need Go >= 1.26)" >&2; exit 1; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$BIN"
work="$OUT/src"
rm -rf "$work"
mkdir -p "$work/kube" "$work/etcd"

# The staging modules are the ones the release's go.mod lists at v0.0.0.
staging_minor="v0.${KUBE_VERSION#v1.}"
gomod_url="https://proxy.golang.org/k8s.io/kubernetes/@v/$KUBE_VERSION.mod"
if ! staging=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null 2>&1 &&
  grep -E '^\s+k8s.io/\S+ v0.0.0$' "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod" |
  awk '{print $1}'); then
  echo "error: could not fetch $gomod_url through the Go module proxy" >&2
  exit 1
fi

{
  echo "module jobqueue.dev/control-plane"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  for module in $staging; do echo "replace $module => $module $staging_minor"; done
} >"$work/kube/go.mod"
cat >"$work/kube/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
(
  cd "$work/kube"
  go mod tidy -e >/dev/null
  go build -p 2 -trimpath -tags tools -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
)

cat >"$work/etcd/go.mod" <<GOMOD
module jobqueue.dev/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
cat >"$work/etcd/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
(
  cd "$work/etcd"
  go mod tidy -e >/dev/null
  go build -p 2 -trimpath -tags tools -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
)

rm -rf "$work"
touch "$STAMP"
echo "$BIN"
