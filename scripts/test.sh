#!/usr/bin/env bash
# The project's one test command (the README shows it; .ci/run calls it).
# It needs only Go and root on a Debian machine: the real components the
# end-to-end tests run against (Prometheus, HAProxy, Chromium, Redis,
# nginx, Varnish, and axe-core from npm) are installed first when missing. All traffic stays on
# loopback. Knobs: SOAK (default 1m), FUZZTIME per fuzz target (default 10s),
# SIMSEEDS for the fleet simulator (default 3000, each run as a fleet and
# as lone replicas).
set -euo pipefail
cd "$(dirname "$0")/.."

soak=${SOAK:-1m}
fuzztime=${FUZZTIME:-10s}
simseeds=${SIMSEEDS:-3000}

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

# Jaeger, the trace backend the trace e2e sends to, is a Go program: built
# from tools/jaeger, a module of its own (its dependencies stay out of the
# product's go.mod), by go tool, which keeps the binary in the build cache:
# built once per machine, found again after. The first build takes minutes
# of CPU: it runs beside the steps that do not measure time (the static
# checks, the downloads, the simulator's virtual time), and is waited for
# before the first that does (the unit tests have timeouts and timings).
echo "== Jaeger (tools/jaeger, built once and cached by go tool), in the background"
jaeger_path=$(mktemp)
(cd tools/jaeger && go tool -n jaeger >"$jaeger_path") &
jaeger_build=$!

# deploy/check is a module of its own (the Kubernetes API types stay out of
# the product's go.mod): the manifests decoded strictly, the numbers that
# compose, HAProxy, Kubernetes and the binary share, the NetworkPolicy
# against the docs' Redis URLs, the docs' links and the names they use.
echo "== deploy/check (Kubernetes manifests, shared numbers, NetworkPolicy, docs links and names)"
(cd deploy/check && go vet ./... && go test -race -count=1 ./...)

echo "== e2e dependencies (Prometheus, HAProxy, Chromium, Redis, nginx, Varnish, Java from Debian; axe-core, vnu-jar from npm)"
bash scripts/install-e2e-deps.sh

# The fleet simulator: replicas' real cache, loader and fleet code in
# virtual time on miniredis, under seeded faults. Without -race, so it can
# explore its seeds (the race step below runs a few under the detector).
echo "== fleet simulator, $simseeds seeds, each as a fleet and as lone replicas"
go test -count=1 -run '^TestSimulate' ./pkg/web -sim.seeds="$simseeds" -timeout 10m

echo "== waiting for the Jaeger build"
wait "$jaeger_build"
MOVIES_E2E_JAEGER=$(cat "$jaeger_path")
rm -f "$jaeger_path"
export MOVIES_E2E_JAEGER
echo "jaeger: $MOVIES_E2E_JAEGER"

echo "== go test -race (unit and in-process end-to-end)"
go test -race -count=1 $(go list ./... | grep -v '/e2e$')

echo "== soak against the real binary for $soak (no -race: it measures the server)"
go test -v -count=1 -run '^TestSoak$' ./e2e -soak="$soak"

echo "== fuzz, $fuzztime per target"
for target in FuzzClientAndJoin:./pkg/ghibli FuzzJoin:./pkg/ghibli FuzzPage:./pkg/render FuzzErrorPage:./pkg/render; do
  # Go 1.26's fuzz coordinator can fail a target with a bare "context
  # deadline exceeded" as -fuzztime ends, writing no failing input
  # (go.dev/issue/75804, fixed in Go 1.27): that, and only that, is run
  # again, once. A real finding writes its input and fails at once.
  out=$(mktemp)
  if ! go test -run='^$' -fuzz="^${target%%:*}\$" -fuzztime="$fuzztime" -fuzzminimizetime=2s "${target#*:}" 2>&1 | tee "$out"; then
    if grep -q 'context deadline exceeded' "$out" && ! grep -q 'Failing input written' "$out"; then
      echo "fuzz: ${target%%:*} hit the -fuzztime boundary race (go.dev/issue/75804); running it again"
      go test -run='^$' -fuzz="^${target%%:*}\$" -fuzztime="$fuzztime" -fuzzminimizetime=2s "${target#*:}"
    else
      rm -f "$out"; exit 1
    fi
  fi
  rm -f "$out"
done

echo "== e2e against real Prometheus, HAProxy, Redis, nginx, Varnish, Chromium and Jaeger (alone: it loads the machine)"
# Over ten minutes with the Redis deployments: past go test's default bound.
go test -race -count=1 -timeout 30m -skip '^TestSoak$' ./e2e/...
