#!/usr/bin/env bash
# Install the Debian packages the test suite drives as real parts, when they are missing.
#
#   tests/system-packages.sh          # install what is missing (root on Debian), else say what to run
#
# Each line of NEEDS is "command package": the command the tests run, and the Debian package
# that brings it. As root on Debian this runs `apt-get install -y --no-install-recommends` for
# what is missing, so CI on a fresh machine runs every test instead of skipping; elsewhere it
# prints the command to run and exits 0 (the tests that need a missing command then skip, and
# under CI=true a skip fails the run: tests/support/ci.py).
set -euo pipefail

NEEDS=(
  "prometheus prometheus"   # the dashboard and alert tests scrape a real Prometheus
  "promtool prometheus"     # alert rule unit tests
  "kubectl kubectl"         # kustomize rendering of k8s/ (in the image; not in Debian 12)
  "chromium chromium"       # the browser tests (Playwright drives it by executable_path)
  "node nodejs"             # clients/js: its tests, and npm ci for the map libraries
  "npm npm"
)

missing=()
for need in "${NEEDS[@]}"; do
  read -r cmd pkg <<<"$need"
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

installable=()
for pkg in "${missing[@]}"; do
  if command -v apt-cache >/dev/null 2>&1 && apt-cache show "$pkg" >/dev/null 2>&1; then
    installable+=("$pkg")
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "tests/system-packages.sh: installing ${missing[*]} (Debian packages the tests use)" >&2
  apt-get update -qq >/dev/null
  # Look again after the update: a fresh machine's package lists may have been empty.
  installable=()
  for pkg in "${missing[@]}"; do
    apt-cache show "$pkg" >/dev/null 2>&1 && installable+=("$pkg")
  done
  if [ ${#installable[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${installable[@]}" >/dev/null
  fi
  # Installing varnish may start its daemon on machines with an init system; the tests start
  # their own on free ports, so stop a packaged one rather than leave it on port 6081.
  pkill -x varnishd 2>/dev/null || true
else
  echo "tests/system-packages.sh: missing ${missing[*]}; as root run:" \
       "apt-get install -y --no-install-recommends ${missing[*]}" >&2
fi
