#!/usr/bin/env bash
# The stock OpenFeature OFREP providers (Python: openfeature-provider-ofrep, Node:
# @openfeature/ofrep-provider and @openfeature/ofrep-web-provider) against a real local 3-node Flagstaff cluster on loopback.
#
# Builds `flagstaff`, starts `flagstaff cluster up` on free ports in a temporary data dir,
# creates a namespace, flags and an SDK key with curl, then runs both language tests with the
# providers pointed at followers while the admin writes go to the leader. Exits non-zero on any
# failure. The Python venv and the npm install are cached under $CARGO_TARGET_DIR/ofrep-providers
# and tests/ofrep-providers/node/node_modules. KEEP_DATA=1 keeps the cluster's data dir and logs;
# FLAGSTAFF_BIN=path uses that binary instead of building one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
name=ofrep
# shellcheck source=../lib/local-cluster.sh
source "$here/../lib/local-cluster.sh"
require_tools cargo curl python3 node npm

flagstaff_binary

# --- language dependencies (before the cluster starts, so slow installs cost no cluster time)
phase "python venv"
python_venv "$target_dir/ofrep-providers/venv" "$here/python/requirements.txt"
phase "npm ci"
(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)

start_local_cluster

# --- namespace, flags and SDK key
ns=ofrep-test
admin PUT "/v1/namespaces/$ns" '{"description":"OFREP provider test"}'
flag() { admin PUT "/v1/namespaces/$ns/flags/$1" "$2"; }
flag bool-flag '{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on","metadata":{"owner":"checkout-team"}}'
flag string-flag '{"state":"ENABLED","variants":{"red":"red","blue":"blue"},"defaultVariant":"blue"}'
flag int-flag '{"state":"ENABLED","variants":{"small":3,"large":42},"defaultVariant":"large"}'
flag float-flag '{"state":"ENABLED","variants":{"low":0.25,"high":2.0},"defaultVariant":"high"}'
flag float-frac-flag '{"state":"ENABLED","variants":{"low":0.25,"high":2.0},"defaultVariant":"low"}'
flag object-flag '{"state":"ENABLED","variants":{"cfg":{"theme":"dark","retries":3,"tags":["a","b"],"limits":{"rps":2.5}},"empty":{}},"defaultVariant":"cfg"}'
flag targeted-flag '{"state":"ENABLED","variants":{"internal":"internal","external":"external"},"defaultVariant":"external",
  "targeting":{"if":[{"ends_with":[{"var":"email"},"@example.com"]},"internal","external"]}}'
flag split-flag '{"state":"ENABLED","variants":{"control":"control","treatment":"treatment"},"defaultVariant":"control",
  "targeting":{"fractional":[["control",50],["treatment",50]]}}'
flag no-default-flag '{"state":"ENABLED","variants":{"a":"a","b":"b"},"defaultVariant":null}'
flag disabled-flag '{"state":"DISABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}'
for f in flip-python flip-node flip-web; do
  flag "$f" '{"state":"ENABLED","variants":{"old":"before","new":"after"},"defaultVariant":"old"}'
done
key_json="$(admin POST "/v1/namespaces/$ns/sdk-keys" '{"name":"ofrep-providers"}')"
read -r sdk_key key_rev < <(printf '%s' "$key_json" | python3 -c 'import json,sys; k=json.load(sys.stdin); print(k["secret"], k["revision"])')

# Both followers have applied the key and the flags (bounded reads would get there within the
# staleness bound anyway; min_revision makes the start deterministic).
for u in "${followers[@]}"; do
  ok=0
  for _ in $(seq 1 5); do # min_revision waits up to 3 s per try
    code="$(curl -s -o "$work/bulk.json" -w '%{http_code}' --max-time 10 -X POST \
      -H "Authorization: Bearer $sdk_key" -H 'Content-Type: application/json' -d '{"context":{}}' \
      "$u/ofrep/v1/evaluate/flags?min_revision=$key_rev")"
    [ "$code" = 200 ] && { ok=1; break; }
    sleep 0.5
  done
  [ "$ok" = 1 ] || { echo "run.sh: $u did not reach revision $key_rev (last status $code)" >&2; exit 1; }
done

# --- the language tests
export FLAGSTAFF_SDK_KEY="$sdk_key" FLAGSTAFF_ADMIN_URL="$leader_url" FLAGSTAFF_ADMIN_TOKEN="$token"
export FLAGSTAFF_NAMESPACE="$ns" FLAGSTAFF_OUT_DIR="$work"
status=0
phase "python provider against ${followers[0]}"
FLAGSTAFF_OFREP_URL="${followers[0]}" FLAGSTAFF_FLIP_FLAG=flip-python \
  timeout 120 "$venv/bin/python" "$here/python/test_ofrep.py" || status=1
phase "node provider against ${followers[1]}"
FLAGSTAFF_OFREP_URL="${followers[1]}" FLAGSTAFF_FLIP_FLAG=flip-node \
  timeout 120 node "$here/node/ofrep.test.mjs" || status=1
phase "node web provider (bulk, If-None-Match polling) against ${followers[0]}"
FLAGSTAFF_OFREP_URL="${followers[0]}" FLAGSTAFF_WEB_FLIP_FLAG=flip-web \
  timeout 120 node "$here/node/web.test.mjs" || status=1

# Both providers sent the same contexts, so both must see the same split assignment.
if [ -f "$work/split-python.json" ] && [ -f "$work/split-node.json" ]; then
  if python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
    "$work/split-python.json" "$work/split-node.json"; then
    echo "ok   both providers: the same split assignment for 200 keys"
  else
    echo "FAIL both providers: split assignments differ"
    status=1
  fi
else
  echo "FAIL split assignments missing"
  status=1
fi

if [ "$status" = 0 ]; then
  phase "OFREP providers: all passed"
else
  phase "OFREP providers: FAILED"
fi
exit "$status"
