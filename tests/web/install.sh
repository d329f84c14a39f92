#!/usr/bin/env bash
# Installs the pinned playwright-core (see package-lock.json) into
# ./node_modules for tests/web.rs. It drives the system's Chromium and
# downloads no browser. Idempotent: skips the install when node_modules
# already matches package-lock.json and the current node version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

die() { echo "tests/web/install.sh: $*" >&2; exit 1; }

command -v node >/dev/null || die "node not found (need Node >= 20)"
command -v npm >/dev/null || die "npm not found"
[ -f package-lock.json ] || die "package-lock.json missing"

stamp=node_modules/.knotd-install-stamp
want="$(node -v) $(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  node -e 'require.resolve("playwright-core")' 2>/dev/null; then
  exit 0
fi
rm -f "$stamp"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
