#!/usr/bin/env bash
# Fetches the Apache Kafka broker's jars (version pinned in scripts/kafka/pom.xml) from
# Maven Central into $JQ_CACHE_DIR/kafka/<version>/lib and prints that directory.
# A stamp file marks a finished fetch, so later runs return at once.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pom="$here/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
CACHE_DIR="${JQ_CACHE_DIR:-$HOME/.cache/jobqueue}"
OUT="$CACHE_DIR/kafka/$version"
STAMP="$OUT/.fetched"

if [[ -f "$STAMP" ]]; then
  echo "$OUT/lib"
  exit 0
fi
command -v mvn >/dev/null || { echo "error: mvn is not installed (apt-get install maven)" >&2; exit 1; }
command -v java >/dev/null || { echo "error: java is not installed (need Java >= 17)" >&2; exit 1; }

rm -rf "$OUT/lib"
mkdir -p "$OUT"
mvn -q -B -f "$pom" dependency:copy-dependencies \
  -DoutputDirectory="$OUT/lib" -DincludeScope=runtime >&2
touch "$STAMP"
echo "$OUT/lib"
