#!/usr/bin/env bash
# Installs what the end-to-end tests (e2e/) run against, from Debian packages:
# Prometheus and promtool, HAProxy, Chromium. Idempotent: does nothing when
# all are there. Needs root (or sudo) and Debian's package archive.
set -euo pipefail

missing=()
for bin in prometheus promtool haproxy chromium; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "e2e deps: prometheus, promtool, haproxy, chromium all present"
  exit 0
fi

echo "e2e deps: missing ${missing[*]}; installing from Debian packages"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
# Debian's prometheus package ships promtool.
"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus haproxy chromium

for bin in prometheus promtool haproxy chromium; do
  command -v "$bin" >/dev/null 2>&1 || { echo "e2e deps: $bin still missing after install" >&2; exit 1; }
done
