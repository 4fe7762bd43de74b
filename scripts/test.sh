#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (system packages, cargo-nextest,
# cargo-deb), builds, checks the Debian package, then runs the stock OpenFeature OFREP providers
# and the stock Python and Node flagd providers (in-process, over the flagd sync service) against a live
# cluster, the web console in Chromium against a live cluster, fuzzes a live
# cluster against its OpenAPI document (schemathesis) while the flag evaluator is fuzzed, runs
# the fault-injection suite, every Rust test with nextest, and the checkers' deliberate breaks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# CI builds once from scratch: incremental caches would only take disk (gigabytes for the
# test binaries) and never be reused there.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi
cargo build --workspace --all-targets --locked
# The Debian package, from the binary just built (a release package: README "As a service").
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
cargo deb -p flagstaff-cluster --no-build --profile dev -o "$CARGO_TARGET_DIR/flagstaff.deb"
bash deploy/debian/check.sh "$CARGO_TARGET_DIR/flagstaff.deb"
# 60 s of fuzzing parse → validate → compile → evaluate, with memory and time limits per input:
# on one core, beside the suites below (which mostly wait on their cluster, a provider or a
# browser), and waited for before the fault suite, which wants the machine to itself.
fuzz_log="$CARGO_TARGET_DIR/fuzz.log"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" bash flags/fuzz/run.sh 60 >"$fuzz_log" 2>&1 &
fuzz_pid=$!
trap 'kill "$fuzz_pid" 2>/dev/null || true' EXIT
FLAGSTAFF_BIN="$CARGO_TARGET_DIR/debug/flagstaff" bash tests/ofrep-providers/run.sh
FLAGSTAFF_BIN="$CARGO_TARGET_DIR/debug/flagstaff" bash tests/flagd-providers/run.sh
FLAGSTAFF_BIN="$CARGO_TARGET_DIR/debug/flagstaff" bash tests/ui/run.sh
FLAGSTAFF_BIN="$CARGO_TARGET_DIR/debug/flagstaff" bash tests/openapi/run.sh
fuzz_status=0
wait "$fuzz_pid" || fuzz_status=$?
tail -n 20 "$fuzz_log"
[ "$fuzz_status" = 0 ] || { echo "fuzzing failed (exit $fuzz_status); log: $fuzz_log" >&2; exit 1; }
# Real processes under seeded faults, checked (jepsen-like-tests/README.md); then every Rust
# test with nextest, whose test binaries the build above already made; then proof that the
# checkers catch each deliberate break (flagstaff-faulty, a debug-only node binary), last, so
# that its feature build (--all-targets, so features resolve as in the plain build and RocksDB
# is not compiled a second time: a --bins build compiled it again, 10 min cold)
# does not make nextest rebuild what the plain build had.
runs="$CARGO_TARGET_DIR/jepsen-runs"
"$CARGO_TARGET_DIR/debug/jepsen-like-tests" run --profile ci --seed 1 --out "$runs"
cargo nextest run --workspace --locked --no-fail-fast
cargo build --workspace --all-targets --locked --features jepsen-like-tests/fault-injection
"$CARGO_TARGET_DIR/debug/jepsen-like-tests" breaks --seed 1 --out "$runs"
# A failing disk (the fault-injection build): the node must fail /healthz and exit non-zero,
# the others keep the data.
"$CARGO_TARGET_DIR/debug/jepsen-like-tests" disk-fault --out "$runs"
