#!/usr/bin/env bash
# The movies benchmarks: installs what they need from Debian if it is
# missing (wrk, nginx, redis-server), then runs the Go program in bench/
# with this script's arguments, e.g.
#
#   ./scripts/bench.sh hit                  # the hit path vs the floor and nginx, peak RSS
#   ./scripts/bench.sh churn                # expiry churn
#   ./scripts/bench.sh scale -n 1,10,20,30  # N replicas on one redis-server
#   ./scripts/bench.sh emulate -n 100,1000  # N in-process fleet tiers
#   ./scripts/bench.sh all                  # hit, then churn
#
# `./scripts/bench.sh SUBCOMMAND -h` lists a subcommand's flags; see
# docs/performance.md for what each prints.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  echo "bench: installing ${missing[*]} from Debian" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
exec go run ./bench "$@"
