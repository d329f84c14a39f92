#!/usr/bin/env bash
# The whole test suite: unit, multi-node, CLI, crash and real-PDS tests, then a
# short fuzz run of every decoder. Needs git, and node >= 20 with npm for the
# reference PDS (installed into tests/pds/node_modules on first use), and
# Chromium for the browser test (playwright-core into tests/web/node_modules).
# The soak runs for KNOTD_SOAK_SECS (default 300; results in target/soak).
# KNOTD_FUZZ_SECONDS sets the fuzz time per target (default 5; 0 skips fuzzing);
# the short run builds without a sanitizer (knotd has no unsafe code), the long
# run in fuzz/README.md uses AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/pds/install.sh
tests/web/install.sh
cargo test --all-targets --locked --no-fail-fast

# Five minutes of the soak (tests/soak.rs, SOAK.md): real knotd processes in
# network namespaces under faults. KNOTD_SOAK_SECS=0 skips it.
soak_seconds="${KNOTD_SOAK_SECS:-300}"
if [ "$soak_seconds" != "0" ]; then
  KNOTD_SOAK_SECS="$soak_seconds" KNOTD_SOAK_RESULTS="${KNOTD_SOAK_RESULTS:-target/soak}" \
    cargo test --locked --test soak -- --ignored --nocapture
fi

fuzz_seconds="${KNOTD_FUZZ_SECONDS:-5}"
if [ "$fuzz_seconds" != "0" ]; then
  FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" scripts/fuzz.sh "$fuzz_seconds"
fi
