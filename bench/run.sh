#!/usr/bin/env bash
# The side-by-side report in one command, from the repo root:
#   bash bench/run.sh            # full run (~30 min on 2 cores): bench/results/YYYY-MM-DD.md + SVG plots
#   bash bench/run.sh --quick    # smoke run (~3 min): the same report under $CARGO_TARGET_DIR/bench-quick/
# Installs etcd (Debian etcd-server, etcd-client) when missing, builds in release, runs the
# evaluation benches (criterion), then every cluster phase (bench/src/bin/bench_report.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
case "${1:-}" in
  --quick) quick="--quick" ;;
  "") ;;
  *) echo "usage: bash bench/run.sh [--quick]" >&2; exit 2 ;;
esac

t0=$SECONDS
phase() { echo "== [$((SECONDS - t0))s] $*" >&2; }

phase "install what is missing (the build set: libclang-dev, g++; etcd-server, etcd-client)"
bash scripts/setup.sh build
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y etcd-server etcd-client
fi

# 10,000 watch streams need ~10,000 descriptors in the bench process and ~3,400 per node.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
  echo "bench: open-file limit $(ulimit -n) is below 12000 (10,000 subscribers); raise the hard limit" >&2
  exit 1
fi

target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac

phase "build (release; the first one compiles RocksDB in release, 10-20 min)"
# Workspace-wide, so features resolve as in every other build and RocksDB is built once.
cargo build --release --locked --workspace --bins

phase "evaluation benches (criterion: flagstaff-flags vs datalogic-rs vs unleash-yggdrasil)"
# The `peers` feature changes build-time features, so on a fresh machine this compiles RocksDB
# in release a second time (10-20 min, once); see bench/Cargo.toml.
if [ -n "$quick" ]; then times=(--warm-up-time 0.5 --measurement-time 1); else times=(--warm-up-time 1 --measurement-time 4); fi
cargo bench --locked --workspace --features flagstaff-bench/peers --bench peers -- "${times[@]}" 2>&1 | grep -E '^(peer_|Benchmarking .*: Analyzing)|time:' | grep -v '^Benchmarking' || true

date="$(date -u +%F)"
if [ -n "$quick" ]; then out="$target_dir/bench-quick"; else out="bench/results"; fi
phase "clusters: writes, reads, failover, propagation, memory, recovery (progress below)"
"$target_dir/release/bench_report" $quick \
  --flagstaff-bin "$target_dir/release/flagstaff" \
  --etcd-bin "$(command -v etcd)" --etcdctl-bin "$(command -v etcdctl)" \
  --criterion-dir "$target_dir/criterion" \
  --out-dir "$out" --date "$date" \
  --command "bash bench/run.sh${quick:+ $quick}"
phase "recovery through a Raft snapshot install (own cluster, small snapshot policy)"
# The quick run writes less, so it takes snapshots more often to still send one.
if [ -n "$quick" ]; then snap=(--writes 50000 --snapshot-every 100 --logs-behind-snapshot 10); else snap=(--writes 1000000); fi
{
  echo
  "$target_dir/release/snapshot_recovery" --flagstaff-bin "$target_dir/release/flagstaff" \
    "${snap[@]}" --command "bash bench/run.sh${quick:+ $quick}"
  echo
} >>"$out/$date.md"
phase "segment writes in a namespace of 10,000 segments beside one of 10 (own cluster)"
if [ -n "$quick" ]; then segw=(--writes 50); else segw=(--writes 300); fi
{
  echo
  echo "## Segment writes: 10,000 segments beside 10"
  echo
  "$target_dir/release/segment_writes" --flagstaff-bin "$target_dir/release/flagstaff" "${segw[@]}"
  echo
} >>"$out/$date.md"
phase "done: $out/$date.md"
