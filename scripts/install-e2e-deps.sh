#!/usr/bin/env bash
# Installs what the end-to-end tests (e2e/) run against: Prometheus and
# promtool, HAProxy, Chromium, Node.js and npm, redis-server, nginx and
# Varnish from Debian packages, and axe-core (pinned by
# e2e/axe/package-lock.json) from npm into e2e/axe/node_modules.
# Idempotent: does nothing when all are there. Needs root (or sudo),
# Debian's package archive and the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package providing each command; Debian's prometheus package ships
# promtool.
declare -A pkg=([prometheus]=prometheus [promtool]=prometheus [haproxy]=haproxy
  [chromium]=chromium [node]=nodejs [npm]=npm [redis-server]=redis-server
  [nginx]=nginx [varnishd]=varnish)

missing=()
for bin in "${!pkg[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "e2e deps: prometheus, promtool, haproxy, chromium, node, npm, redis-server, nginx, varnishd all present"
else
  echo "e2e deps: missing ${missing[*]}; installing from Debian packages"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
  fi
  packages=()
  for bin in "${missing[@]}"; do packages+=("${pkg[$bin]}"); done
  export DEBIAN_FRONTEND=noninteractive
  # The nginx, varnish and redis packages start their system services on
  # install where they can; the tests run their own instances on free
  # loopback ports, and a packaged nginx failing to bind :80 would fail the
  # install. A policy-rc.d that denies every start (as Docker images ship)
  # keeps services down for the install, and is removed after if we made it.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
  fi
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends $(printf '%s\n' "${packages[@]}" | sort -u)
  for bin in "${!pkg[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || { echo "e2e deps: $bin still missing after install" >&2; exit 1; }
  done
fi

# axe-core: npm ci installs exactly the locked version, so every run audits
# with the same rules. It is skipped when that version is already there,
# so a machine that has it needs no registry.
axe=e2e/axe
want=$(node -p "require('./$axe/package-lock.json').packages['node_modules/axe-core'].version")
have=$(node -p "try { require('./$axe/node_modules/axe-core/package.json').version } catch { '' }")
if [[ $have == "$want" && -f $axe/node_modules/axe-core/axe.min.js ]]; then
  echo "e2e deps: axe-core $have present"
else
  echo "e2e deps: installing axe-core $want with npm ci"
  (cd "$axe" && npm ci --no-audit --no-fund --ignore-scripts)
  [[ -f $axe/node_modules/axe-core/axe.min.js ]] || { echo "e2e deps: axe-core still missing after npm ci" >&2; exit 1; }
fi
