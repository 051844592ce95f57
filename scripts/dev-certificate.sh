#!/usr/bin/env bash
# A throwaway CA and a serving certificate it signed, for clusters without cert-manager
# (the kind path). Writes cert-manager's file names into DIRECTORY: ca.crt, tls.crt and
# tls.key, ready for
#
#   kubectl create secret generic NAME --type kubernetes.io/tls --from-file=DIRECTORY
#
# Usage: scripts/dev-certificate.sh DIRECTORY NAME... (DNS names or IP addresses; the
# first is also the subject's common name). Needs openssl 1.1.1 or later.
#
# Keys are ECDSA P-256; both certificates last DAYS (default 30) days. The CA's key is
# thrown away at the end, so nothing else can ever be issued under this CA: a new run
# mints a new CA, and whoever trusted the old one must be given the new ca.crt.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 DIRECTORY NAME..." >&2
  exit 2
fi
directory=$1
shift
days="${DAYS:-30}"

names=()
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
    names+=("IP:$name")
  else
    names+=("DNS:$name")
  fi
done
subject_alt_names=$(IFS=,; echo "${names[*]}")

mkdir -p "$directory"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
umask 077

# The CA: self-signed, allowed to sign certificates and nothing else.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 \
  -keyout "$scratch/ca.key" -out "$directory/ca.crt" -days "$days" \
  -subj "/CN=jobqueue-dev-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

# The server's key and certificate, for the given names, for TLS servers only.
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 \
  -keyout "$directory/tls.key" -out "$scratch/tls.csr" -subj "/CN=$1"
cat >"$scratch/extensions" <<EXTENSIONS
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$subject_alt_names
EXTENSIONS
openssl x509 -req -in "$scratch/tls.csr" -CA "$directory/ca.crt" -CAkey "$scratch/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
  -extfile "$scratch/extensions" -out "$directory/tls.crt"
chmod 644 "$directory/ca.crt" "$directory/tls.crt"
