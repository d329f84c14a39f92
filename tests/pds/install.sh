#!/usr/bin/env bash
# Installs the pinned reference PDS (see package-lock.json) into ./node_modules.
# Idempotent: skips the (slow, ~1.5 min) install when node_modules already
# matches package-lock.json and the current node version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

die() { echo "tests/pds/install.sh: $*" >&2; exit 1; }

command -v node >/dev/null || die "node not found (need Node >= 20)"
command -v npm >/dev/null || die "npm not found"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "Node >= 20 required, found $(node -v)"
[ -f package-lock.json ] || die "package-lock.json missing"

stamp=node_modules/.knotd-install-stamp
want="$(node -v) $(sha256sum package-lock.json | cut -d' ' -f1)"
# The PDS and its native database module both load: the install is complete.
usable() {
  node -e 'require.resolve("@atproto/pds"); new (require("better-sqlite3"))(":memory:").close()'
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && usable 2>/dev/null; then
  exit 0
fi
rm -f "$stamp"

# better-sqlite3 is compiled from source (its prebuilt binaries live on GitHub,
# which is unreachable). node-gyp needs the Node headers locally; without a
# configured nodedir it would try to download them.
nodedir=$(npm config get nodedir 2>/dev/null || true)
if { [ -z "$nodedir" ] || [ "$nodedir" = "undefined" ] || [ "$nodedir" = "null" ]; } \
   && [ -f /usr/include/node/node_version.h ]; then
  export npm_config_nodedir=/usr
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! npm ci --no-audit --no-fund --loglevel=error >"$log" 2>&1; then
  cat "$log" >&2
  die "npm ci failed"
fi
usable \
  || die "@atproto/pds or the better-sqlite3 native module did not install/load (need python3, make, g++ and Node headers)"
echo "$want" > "$stamp"
echo "tests/pds: installed $(node -p 'require("@atproto/pds/package.json").version' 2>/dev/null | sed 's/^/@atproto\/pds@/')" >&2
