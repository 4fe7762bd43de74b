#!/usr/bin/env bash
# Builds flagstaff and starts a local 3-node cluster in the foreground (Ctrl-C stops it).
# Extra arguments go to `flagstaff cluster up` (e.g. --nodes 5 --data-dir /tmp/fs).
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what the build needs (RocksDB's C/C++ toolchain), not the test suite's Node.js or Chromium.
bash scripts/setup.sh build
# Only the `flagstaff` binary and what it links: the fewest crates to a first cluster. It builds
# RocksDB with the same features as bench/run.sh's workspace-wide release build, which reuses it;
# the debug builds of scripts/test.sh share nothing with a release build either way.
cargo build --release --locked -p flagstaff-cluster
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/flagstaff" cluster up "$@"
