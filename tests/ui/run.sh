#!/usr/bin/env bash
# The web console in a real browser: Playwright (playwright-core from npm) drives Debian's
# Chromium against a real local 3-node cluster on loopback (console.test.mjs: sign in, create
# and flip a flag, see it on another node, invalid rules, the rule builder, preview, a
# conflicting edit, history, segments, SDK keys, no-JS and phone-sized pages, and the cluster
# page after the leader is killed). Screenshots of each page go to target/ui-screenshots/.
# KEEP_DATA=1 keeps the cluster's data and logs; FLAGSTAFF_BIN=path uses that binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
name=ui
# shellcheck source=../lib/local-cluster.sh
source "$here/../lib/local-cluster.sh"
require_tools cargo curl python3 node npm
[ -x /usr/bin/chromium ] || { echo "ui: /usr/bin/chromium is required (apt-get install -y chromium; scripts/setup.sh does it)" >&2; exit 1; }

flagstaff_binary
phase "npm ci"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
start_local_cluster

screenshots="$PWD/target/ui-screenshots"
rm -rf "$screenshots"
phase "browser tests (Chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'))"
FLAGSTAFF_URLS="${urls[*]}" FLAGSTAFF_TOKEN="$token" FLAGSTAFF_CLUSTER_LOG="$work/cluster.log" \
  FLAGSTAFF_SCREENSHOTS="$screenshots" timeout 300 node "$here/console.test.mjs"
phase "done"
