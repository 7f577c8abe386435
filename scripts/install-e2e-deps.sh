#!/usr/bin/env bash
# Installs what the end-to-end tests (e2e/) run against: Prometheus and
# promtool, HAProxy, Chromium, Node.js and npm, redis-server, redis-cli,
# redis-sentinel, openssl, nginx, Varnish and Java from Debian packages, and
# axe-core and the Nu HTML checker (pinned by e2e/axe/package-lock.json)
# from npm into e2e/axe/node_modules.
# Idempotent: does nothing when all are there. Needs root (or sudo),
# Debian's package archive and the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package providing each command; Debian's prometheus package ships
# promtool. Java runs the Nu HTML checker (vnu.jar). redis-cli (redis-tools)
# builds a Redis Cluster, redis-sentinel runs a Sentinel set and openssl makes
# the TLS case's CA and certificates (e2e/deployments_test.go).
declare -A pkg=([prometheus]=prometheus [promtool]=prometheus [haproxy]=haproxy
  [chromium]=chromium [node]=nodejs [npm]=npm [redis-server]=redis-server
  [redis-cli]=redis-tools [redis-sentinel]=redis-sentinel [openssl]=openssl
  [nginx]=nginx [varnishd]=varnish [java]=openjdk-17-jre-headless)

missing=()
for bin in "${!pkg[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "e2e deps: prometheus, promtool, haproxy, chromium, node, npm, redis-server, redis-cli, redis-sentinel, openssl, nginx, varnishd, java all present"
else
  echo "e2e deps: missing ${missing[*]}; installing from Debian packages"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
  fi
  packages=()
  for bin in "${missing[@]}"; do packages+=("${pkg[$bin]}"); done
  export DEBIAN_FRONTEND=noninteractive
  # The nginx, varnish, redis and redis-sentinel packages start their
  # system services on install where they can; the tests run their own instances on free
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

# axe-core and the Nu HTML checker (vnu-jar, whose package ships vnu.jar:
# it runs offline on the machine's Java): npm ci installs exactly the locked
# versions, so every run audits with the same rules. It is skipped when
# those versions are already there, so a machine that has them needs no
# registry.
axe=e2e/axe
version() { node -p "try { require('./$axe/$1').version } catch { '' }"; }
want=$(node -p "require('./$axe/package-lock.json').packages['node_modules/axe-core'].version")
have=$(version node_modules/axe-core/package.json)
want_vnu=$(node -p "require('./$axe/package-lock.json').packages['node_modules/vnu-jar'].version")
have_vnu=$(version node_modules/vnu-jar/package.json)
if [[ $have == "$want" && -f $axe/node_modules/axe-core/axe.min.js && $have_vnu == "$want_vnu" && -f $axe/node_modules/vnu-jar/build/dist/vnu.jar ]]; then
  echo "e2e deps: axe-core $have and vnu-jar $have_vnu present"
else
  echo "e2e deps: installing axe-core $want and vnu-jar $want_vnu with npm ci"
  (cd "$axe" && npm ci --no-audit --no-fund --ignore-scripts)
  [[ -f $axe/node_modules/axe-core/axe.min.js ]] || { echo "e2e deps: axe-core still missing after npm ci" >&2; exit 1; }
  [[ -f $axe/node_modules/vnu-jar/build/dist/vnu.jar ]] || { echo "e2e deps: vnu.jar still missing after npm ci" >&2; exit 1; }
fi
