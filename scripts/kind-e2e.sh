#!/usr/bin/env bash
# The full path on a real cluster, with real pods: `make kind-e2e`.
#
#   1. checks the tools: Docker with a running engine (the one thing not installed for you),
#      Go (which builds kind), openssl, and Helm and kubectl from `make bootstrap`'s caches;
#   2. builds kind from the Go module proxy (cached) and creates a cluster (or reuses one);
#   3. builds the operator and worker images from the Dockerfile and loads them into it;
#   4. deploys PostgreSQL, Redis and Kafka in the cluster (manifests/dev), mints the
#      operator's certificate with scripts/dev-certificate.sh (no cert-manager) into the
#      Secret jobqueue-tls and its CA into the ConfigMap jobqueue-ca of the examples'
#      namespace, installs the chart with manifests/dev/helm-values.yaml, and waits for the
#      rollout;
#   5. applies the examples (manifests/examples) and who may call the operator
#      (manifests/dev/examples-access.yaml) in the namespace jobqueue-examples;
#   6. runs tests/e2e/kind against the cluster, over TLS with a token of e2e-caller;
#   7. deletes the cluster, unless KEEP_CLUSTER=1.
#
# Settings (environment): KIND_CLUSTER (default jobqueue-e2e), KEEP_CLUSTER=1, KIND_VERSION,
# KIND_NODE_IMAGE (kind's default node image when unset), PYTEST_ARGS.
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER="${KIND_CLUSTER:-jobqueue-e2e}"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
CACHE_DIR="${JQ_CACHE_DIR:-$HOME/.cache/jobqueue}"
RELEASE=jobqueue
SYSTEM_NAMESPACE=jobqueue-system
EXAMPLES_NAMESPACE=jobqueue-examples
# The tags the chart (appVersion) and the examples name, so both run unchanged.
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/jobqueue/Chart.yaml)
OPERATOR_IMAGE="ghcr.io/jobqueue/operator:$VERSION"
WORKER_IMAGE="ghcr.io/jobqueue/worker:$VERSION"

say() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 1. Tools. Everything missing is reported at once, with what to do about it.
problems=()
if ! command -v docker >/dev/null; then
  problems+=("docker is not installed: the kind path needs Docker with a running engine")
elif ! docker info >/dev/null 2>&1; then
  problems+=("docker cannot reach an engine (docker info fails): start the Docker daemon")
fi
command -v go >/dev/null || problems+=("go is not installed: Go >= 1.26 builds kind, Helm and kubectl")
command -v openssl >/dev/null || problems+=("openssl is not installed: it mints the operator's certificate")
[[ -x .venv/bin/pytest ]] || problems+=("no virtualenv in .venv: run \`make bootstrap\`")
if ((${#problems[@]})); then
  printf 'error: make kind-e2e cannot run here:\n' >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
KUBECTL="$(bash scripts/build-control-plane.sh)/kubectl"
HELM="$(bash scripts/build-helm.sh)/helm"
KIND_BIN="$CACHE_DIR/kind/$KIND_VERSION/bin"
if [[ ! -x "$KIND_BIN/kind" ]]; then
  say "building kind $KIND_VERSION from the Go module proxy"
  mkdir -p "$KIND_BIN"
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$KIND_BIN" go install -trimpath "sigs.k8s.io/kind@$KIND_VERSION"
fi
KIND="$KIND_BIN/kind"

# 2. The cluster, and a kubeconfig of its own (the user's ~/.kube/config is left alone).
work=$(mktemp -d)
KUBECONFIG_FILE="$work/kubeconfig"
cleanup() {
  status=$?
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    say "keeping the cluster $CLUSTER: $KIND get kubeconfig --name $CLUSTER > kubeconfig"
  else
    say "deleting the cluster $CLUSTER"
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing the kind cluster $CLUSTER"
else
  say "creating the kind cluster $CLUSTER"
  "$KIND" create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} >&2
fi
"$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
kubectl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
helm() { "$HELM" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# 3. Images, built once per run and copied into the cluster's node (never pulled).
say "building $OPERATOR_IMAGE and $WORKER_IMAGE"
docker build --target operator -t "$OPERATOR_IMAGE" . >&2
docker build --target worker -t "$WORKER_IMAGE" . >&2
"$KIND" load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE" >&2

# 4. Dependencies, then the chart on top of them.
say "deploying PostgreSQL, Redis and Kafka (manifests/dev)"
kubectl apply --server-side -k manifests/dev >&2
kubectl -n "$SYSTEM_NAMESPACE" rollout status deployment/postgresql deployment/redis \
  deployment/kafka --timeout=300s >&2
kubectl create namespace "$EXAMPLES_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >&2

# The operator's certificate, from a CA of this cluster's own. A reused cluster keeps its
# Secret (it is made only when missing), so pods already running go on trusting it. The CA
# is read back from the Secret either way: for the ConfigMap that worker pods of the
# examples get it from (tls.caConfigMapName), and for the tests.
TLS_SECRET=jobqueue-tls
CA_CONFIGMAP=jobqueue-ca
SERVICE="$RELEASE.$SYSTEM_NAMESPACE.svc"
if ! kubectl -n "$SYSTEM_NAMESPACE" get secret "$TLS_SECRET" >/dev/null 2>&1; then
  say "minting the operator's certificate for $SERVICE"
  bash scripts/dev-certificate.sh "$work/tls" "$SERVICE" "$RELEASE" \
    "$RELEASE.$SYSTEM_NAMESPACE" "$SERVICE.cluster.local" localhost 127.0.0.1 >&2
  kubectl -n "$SYSTEM_NAMESPACE" create secret generic "$TLS_SECRET" \
    --type kubernetes.io/tls --from-file="$work/tls" >&2
fi
CA_FILE="$work/ca.crt"
kubectl -n "$SYSTEM_NAMESPACE" get secret "$TLS_SECRET" \
  -o go-template='{{index .data "ca.crt" | base64decode}}' >"$CA_FILE"
kubectl -n "$EXAMPLES_NAMESPACE" create configmap "$CA_CONFIGMAP" --from-file=ca.crt="$CA_FILE" \
  --dry-run=client -o yaml | kubectl apply -f - >&2

say "installing the chart as $RELEASE in $SYSTEM_NAMESPACE"
helm upgrade --install "$RELEASE" helm/jobqueue --namespace "$SYSTEM_NAMESPACE" \
  --values manifests/dev/helm-values.yaml --set image.tag="$VERSION" \
  --wait=watcher --timeout 5m >&2

# 5. The examples, and who may call the operator there (the pools' workers, the tests).
# pool.yaml reads the SMTP password from a Secret named smtp.
say "applying the examples in $EXAMPLES_NAMESPACE"
kubectl apply --server-side -f manifests/dev/examples-access.yaml >&2
kubectl -n "$EXAMPLES_NAMESPACE" create secret generic smtp --from-literal=password=e2e \
  --dry-run=client -o yaml | kubectl apply -f - >&2
kubectl -n "$EXAMPLES_NAMESPACE" apply --server-side \
  -f manifests/examples/queue.yaml \
  -f manifests/examples/pool.yaml \
  -f manifests/examples/pool-autoscaling.yaml >&2

# 6. The tests, against this cluster only. PYTEST_ARGS is split into words on purpose. They
# reach the operator through a port-forward (127.0.0.1 is in the certificate), trusting its
# CA, with a token of e2e-caller.
say "running tests/e2e/kind"
kubectl -n "$EXAMPLES_NAMESPACE" create token e2e-caller --duration=1h >"$work/token"
# shellcheck disable=SC2086
JQ_E2E_CA_FILE="$CA_FILE" \
JQ_E2E_TLS_SERVER_NAME="$SERVICE" \
JQ_E2E_TOKEN_FILE="$work/token" \
JQ_E2E_KUBECONFIG="$KUBECONFIG_FILE" \
JQ_E2E_KUBECTL="$KUBECTL" \
JQ_E2E_NAMESPACE="$EXAMPLES_NAMESPACE" \
JQ_E2E_RELEASE="$RELEASE" \
JQ_E2E_RELEASE_NAMESPACE="$SYSTEM_NAMESPACE" \
  .venv/bin/pytest tests/e2e/kind ${PYTEST_ARGS:-} || {
    status=$?
    say "tests failed; the operator's last log lines:"
    kubectl -n "$SYSTEM_NAMESPACE" logs "deployment/$RELEASE" --tail=100 >&2 || true
    exit "$status"
  }
