#!/usr/bin/env bash
# Run the whole test suite: unit, multi-node and CLI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets --locked
