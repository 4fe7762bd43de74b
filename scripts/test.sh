#!/usr/bin/env bash
# Runs the whole test suite: installs system packages, builds, runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast
