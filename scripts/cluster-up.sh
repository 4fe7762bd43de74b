#!/usr/bin/env bash
# Builds flagstaff and starts a local 3-node cluster in the foreground (Ctrl-C stops it).
# Extra arguments go to `flagstaff cluster up` (e.g. --nodes 5 --data-dir /tmp/fs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p flagstaff-cluster
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/flagstaff" cluster up "$@"
