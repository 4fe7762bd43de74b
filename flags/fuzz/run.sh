#!/bin/sh
# Builds the libFuzzer target with sanitizer coverage and runs it for a bounded time.
# cargo-fuzz needs nightly; with only a stable toolchain, RUSTC_BOOTSTRAP=1 unlocks the same
# flags cargo-fuzz passes.
#
# Usage: flags/fuzz/run.sh [seconds]   (default 60; 0 builds without running)
# The build goes to $CARGO_TARGET_DIR (default flags/fuzz/target); the corpus grows in
# flags/fuzz/corpus (seeded with the case files) and any crashing input is written to
# flags/fuzz/artifacts/. Reproduce one with: <binary> artifacts/<file>
set -eu
cd "$(dirname "$0")"
SECONDS_TO_RUN="${1:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts, as cargo-fuzz does.
TARGET="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --target "$TARGET" --bin parse_validate_evaluate
BIN="$CARGO_TARGET_DIR/$TARGET/release/parse_validate_evaluate"
if [ "$SECONDS_TO_RUN" = 0 ]; then
  echo "built $BIN"
  exit 0
fi
mkdir -p corpus artifacts
cp -n ../tests/cases/*.json seeds/* corpus/ 2>/dev/null || true
# Any input that makes one run take over 10 s or the process exceed 1 GiB is a finding too:
# every accepted rule must evaluate within the budget of flagstaff_flags::limits.
"$BIN" corpus -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -rss_limit_mb=1024 -timeout=10 \
  -artifact_prefix=artifacts/
