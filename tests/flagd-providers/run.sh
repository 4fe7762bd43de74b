#!/usr/bin/env bash
# The stock flagd providers for Python (openfeature-provider-flagd) and Node
# (@openfeature/flagd-provider), in-process, against a real local 3-node Flagstaff cluster's
# flagd sync listeners (`--listen-sync`, gRPC over TLS) on loopback: every flag type,
# targeting, a `$ref` segment, a disabled flag, a `fractional` split (for 10,000 users the
# same variant as OFREP and flagstaff-client: v3 for Python, v2 for Node; each provider is
# refused a namespace that splits with the other), a write through another node reaching the
# provider (latency printed), the node a provider streams from killed (it keeps its values,
# moves to another node of its address list and gets later changes), and the sync service's
# refusals (no key, unknown namespace, bad selector, a revoked key's stream); then
# flagstaff-flags' evaluation table through the Python provider and OFREP (every case OFREP
# passes, the provider passes too); last, the flagd testbed's gherkin suites through the Node
# provider and OFREP (node/testbed.test.mjs). Python sends the namespace's SDK key; Node cannot send
# one, so its namespace is served key-less (`--sync-keyless-namespace`).
# The venv is cached under $CARGO_TARGET_DIR/flagd-providers. FLAGSTAFF_BIN=path uses that
# binary instead of building.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
name=flagd
# shellcheck source=../lib/local-cluster.sh
source "$here/../lib/local-cluster.sh"
require_tools cargo curl python3 node npm

flagstaff_binary
phase "python venv"
python_venv "$target_dir/flagd-providers/venv" "$here/python/requirements.txt"
phase "npm ci"
(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
phase "flagd testbed"
# The flagd project's testbed (flagd-testbed 0.5.3: its flag files and gherkin suites) as the
# openfeature-provider-flagd 0.1.5 source archive on PyPI ships it (GitHub, where it lives, is
# not reachable from CI): fetched once, its hash checked, kept beside the venv.
testbed="$target_dir/flagd-providers/flagd-testbed-0.5.3"
if [ ! -f "$testbed/gherkin/flagd-json-evaluator.feature" ]; then
  sdist="$work/testbed-sdist.tar.gz"
  curl -sSf --max-time 120 -o "$sdist" "https://files.pythonhosted.org/packages/ea/7f/\
3ee415e6c05a54559ccbad9c226808153dd3f961a88d0a816cfb61b6d46e/openfeature_provider_flagd-0.1.5.tar.gz"
  echo "e00d67eb6987cdfd62cb60ecf0b2b2bb12f9834f9d009e63af2dbbf73d7603d9  $sdist" | sha256sum -c --quiet
  rm -rf "$testbed.tmp" && mkdir -p "$testbed.tmp"
  tar -xzf "$sdist" -C "$testbed.tmp" --strip-components=2 openfeature_provider_flagd-0.1.5/test-harness
  grep -q '"0.5.3"' "$testbed.tmp/.release-please-manifest.json"
  rm -rf "$testbed" && mv "$testbed.tmp" "$testbed"
fi
keyless=flagd-keyless
testbed_ns=flagd-testbed
start_local_cluster --tls --sync-keyless-namespace "$keyless" --sync-keyless-namespace "$testbed_ns"

ns=flagd-test
seed() { # the same flags in namespace $1, its split hashed with fractional algorithm $2
  local ns="$1" alg="$2"
  flag() { admin PUT "/v1/namespaces/$ns/flags/$1" "$2" >/dev/null; }
  admin PUT "/v1/namespaces/$ns" '{"description":"flagd provider test"}' >/dev/null
  admin PUT "/v1/namespaces/$ns/segments/beta" '{"==":[{"var":"plan"},"beta"]}' >/dev/null
  # Flagstaff's own fields (description, tags) are not sent: stock providers refuse them.
  flag bool-flag '{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on",
    "description":"a plain switch","tags":["test"]}'
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
  flag later '{"state":"ENABLED","variants":{"old":"before","new":"after"},"defaultVariant":"old"}'
  flag split '{"state":"ENABLED","variants":{"red":"red","blue":"blue","green":"green"},"defaultVariant":"red",
    "fractionalAlgorithm":"'"$alg"'","targeting":{"fractional":[["red",50],["blue",30],["green",20]]}}'
}
# Python's provider hashes fractional splits with v3, Node's with v2.
seed "$ns" v3
seed "$keyless" v2
key_of() { # a new SDK key of namespace $1
  admin POST "/v1/namespaces/$1/sdk-keys" '{"name":"flagd-providers"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'
}
sdk_key="$(key_of "$ns")"
keyless_key="$(key_of "$keyless")" # for OFREP, to compare the Node provider's split with

# What flagstaff-client assigns 10,000 users in each namespace's split, for the providers to
# compare their own assignments with (and OFREP's).
users=10000
phase "flagstaff-client: the split for $users users"
cargo build --workspace --locked --example assign_users
assign() { # namespace $1, key $2 -> file $3
  FLAGSTAFF_ENDPOINTS="${followers[1]}" FLAGSTAFF_CA_FILE="$ca" FLAGSTAFF_NAMESPACE="$1" \
    FLAGSTAFF_SDK_KEY="$2" FLAGSTAFF_FLAG=split FLAGSTAFF_USERS="$users" \
    timeout 60 "$target_dir/debug/examples/assign_users" >"$3"
}
assign "$ns" "$sdk_key" "$work/assigned-v3.json"
assign "$keyless" "$keyless_key" "$work/assigned-v2.json"

# Each provider gets every node's sync port as one gRPC address list, the provider's node first
# (gRPC's pick_first takes the first that answers, and the next when it goes away): the
# loopback stand-in for a DNS name with every node behind it. The write that must reach it
# goes to the leader. With TLS the name checked is `localhost` (the certificates' name).
port_of() { # the sync port of node URL $1 (node N: sync BASE+N-1, like its client port)
  echo $((sync_port + ${1##*:} - client_port))
}
pid_of() { # the pid of node URL $1
  echo "${node_pids[$((${1##*:} - client_port + 1))]}"
}
served="${followers[0]}"
addresses="ipv4:127.0.0.1:$(port_of "$served")"
for u in "${urls[@]}"; do [ "$u" != "$served" ] && addresses+=",127.0.0.1:$(port_of "$u")"; done
status=0
phase "python flagd provider (in-process) against $served first ($addresses)"
remember_node "$(pid_of "$served")"
ADDRESSES="$addresses" CA="$ca" NS="$ns" SDK_KEY="$sdk_key" KEYLESS_NS="$keyless" \
  ADMIN_URL="$leader_url" TOKEN="$token" KILL_PID="$(pid_of "$served")" \
  OFREP_URL="${followers[1]}" ASSIGNED="$work/assigned-v3.json" \
  timeout 120 "$venv/bin/python" "$here/python/test_in_process.py" || status=1
phase "restart the node the python provider left"
start_node "$(pid_of "$served")" "$served"
phase "flagstaff-flags' evaluation table through the python provider and OFREP"
ADDRESSES="$addresses" CA="$ca" NS=flagd-cases CASES="$PWD/flags/tests/cases/flags.json" \
  ADMIN_URL="$leader_url" TOKEN="$token" OFREP_URL="${followers[1]}" \
  timeout 120 "$venv/bin/python" "$here/python/test_cases.py" || status=1
phase "node flagd provider (in-process, key-less) against $served first"
ADDRESSES="$addresses" CA="$ca" NS="$keyless" SDK_KEY="$keyless_key" OFREP_URL="${followers[1]}" \
  ADMIN_URL="$leader_url" TOKEN="$token" KILL_PID="$started_pid" NODE_EXTRA_CA_CERTS="$ca" \
  ASSIGNED="$work/assigned-v2.json" URLS="$(IFS=,; echo "${urls[*]}")" \
  timeout 120 node "$here/node/in_process.test.mjs" || status=1
phase "the flagd testbed's gherkin suites through the node provider and OFREP"
TESTBED="$testbed" ADDRESSES="$addresses" CA="$ca" NS="$testbed_ns" OFREP_URL="${followers[1]}" \
  ADMIN_URL="$leader_url" TOKEN="$token" NODE_EXTRA_CA_CERTS="$ca" \
  timeout 120 node "$here/node/testbed.test.mjs" || status=1
if [ "$status" = 0 ]; then phase "flagd providers: all passed"; else phase "flagd providers: FAILED"; fi
exit "$status"
