#!/usr/bin/env bash
# The stock flagd provider for Python (openfeature-provider-flagd, in-process resolver) against
# a real local 3-node Flagstaff cluster's flagd sync listeners (`--listen-sync`, gRPC) on
# loopback: every flag type, targeting, a `$ref` segment, a disabled flag, a write through
# another node reaching the provider (its latency printed), and the sync service's refusals
# (no key, unknown namespace, bad selector, a revoked key's stream). The venv is cached under
# $CARGO_TARGET_DIR/flagd-providers. FLAGSTAFF_BIN=path uses that binary instead of building.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
name=flagd
# shellcheck source=../lib/local-cluster.sh
source "$here/../lib/local-cluster.sh"
require_tools cargo curl python3

flagstaff_binary
phase "python venv"
python_venv "$target_dir/flagd-providers/venv" "$here/python/requirements.txt"
start_local_cluster

ns=flagd-test
admin PUT "/v1/namespaces/$ns" '{"description":"flagd provider test"}'
flag() { admin PUT "/v1/namespaces/$ns/flags/$1" "$2"; }
admin PUT "/v1/namespaces/$ns/segments/beta" '{"==":[{"var":"plan"},"beta"]}'
flag bool-flag '{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}'
flag string-flag '{"state":"ENABLED","variants":{"red":"red","blue":"blue"},"defaultVariant":"blue"}'
flag int-flag '{"state":"ENABLED","variants":{"small":3,"large":42},"defaultVariant":"large"}'
flag float-flag '{"state":"ENABLED","variants":{"low":0.25,"high":2.0},"defaultVariant":"high"}'
flag object-flag '{"state":"ENABLED","variants":{"cfg":{"theme":"dark","retries":3},"empty":{}},"defaultVariant":"cfg"}'
flag targeted-flag '{"state":"ENABLED","variants":{"internal":"internal","external":"external"},"defaultVariant":"external",
  "targeting":{"if":[{"ends_with":[{"var":"email"},"@example.com"]},"internal","external"]}}'
flag segment-flag '{"state":"ENABLED","variants":{"beta":"beta-ui","classic":"classic-ui"},"defaultVariant":"classic",
  "targeting":{"if":[{"$ref":"beta"},"beta","classic"]}}'
flag disabled-flag '{"state":"DISABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}'
flag flip '{"state":"ENABLED","variants":{"old":"before","new":"after"},"defaultVariant":"old"}'
sdk_key="$(admin POST "/v1/namespaces/$ns/sdk-keys" '{"name":"flagd-providers"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')"

# The provider streams from a follower; the write that must reach it goes to the leader.
port_of() { # the sync port of node URL $1 (node N: sync BASE+N-1, like its client port)
  echo $((sync_port + ${1##*:} - client_port))
}
provider_port="$(port_of "${followers[0]}")"
others=()
for u in "${urls[@]}"; do [ "$u" != "${followers[0]}" ] && others+=("$(port_of "$u")"); done
status=0
phase "python flagd provider (in-process) against ${followers[0]} (sync port $provider_port)"
SYNC_PORTS="$provider_port,${others[0]},${others[1]}" NS="$ns" SDK_KEY="$sdk_key" \
  ADMIN_URL="$leader_url" TOKEN="$token" \
  timeout 120 "$venv/bin/python" "$here/python/test_in_process.py" || status=1
if [ "$status" = 0 ]; then phase "flagd providers: all passed"; else phase "flagd providers: FAILED"; fi
exit "$status"
