#!/usr/bin/env bash
# Fuzzes a live local 3-node cluster against its own OpenAPI document (`/v1/openapi.json`)
# with schemathesis: no 5xx other than the documented availability answers, no status the
# document does not declare, every response body and content type as the document says.
#
# The cluster gets a namespace with flags, a segment and an SDK key first, so the generated
# requests meet real data as well as missing names. Operations that change membership or
# initialise the cluster are left out of the fuzzing (a random member id could remove a real
# node); they are covered by node/tests/cluster.rs. The watch stream never ends, so it is
# left out too (node/tests/delivery.rs covers it).
#
# One worker: CPython 3.11's ast module is not thread-safe, and hypothesis parses lambdas with it.
# MAX_EXAMPLES (default 20) sets the cases per operation; SEED the generator seed (default 1).
# FLAGSTAFF_BIN=path uses that binary instead of building one; KEEP_DATA=1 keeps the logs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
name=openapi
# shellcheck source=../lib/local-cluster.sh
source "$here/../lib/local-cluster.sh"
require_tools cargo curl python3

flagstaff_binary

phase "python venv (schemathesis)"
python_venv "$target_dir/openapi/venv" "$here/requirements.txt"

# Generated `min_revision` values are mostly revisions that never come: each such read waits
# the node's read timeout (3 s by default) before its 503, which was most of this run's time.
export FLAGSTAFF_READ_TIMEOUT_MS=200
start_local_cluster

phase "seed data"
ns=fuzz
admin PUT "/v1/namespaces/$ns" '{"description":"schemathesis"}'
admin PUT "/v1/namespaces/$ns/segments/internal" '{"ends_with":[{"var":"email"},"@example.com"]}'
admin PUT "/v1/namespaces/$ns/flags/banner" \
  '{"state":"ENABLED","variants":{"a":"hi","b":"yo"},"defaultVariant":"a","targeting":{"if":[{"$ref":"internal"},"b",null]}}'
admin PUT "/v1/namespaces/$ns/flags/limits" \
  '{"state":"ENABLED","variants":{"small":{"max":5},"big":{"max":50}},"defaultVariant":"small"}'
admin POST "/v1/namespaces/$ns/sdk-keys" '{"name":"web"}' >/dev/null

# The document must be the same on every node.
for u in "${urls[@]}"; do
  curl -sS --fail --max-time 10 "$u/v1/openapi.json" -o "$work/openapi-$(basename "$u" | tr : -).json"
done
if [ "$(sha256sum "$work"/openapi-*.json | cut -d' ' -f1 | sort -u | wc -l)" != 1 ]; then
  echo "openapi: nodes serve different documents" >&2
  exit 1
fi

target="${followers[0]}" # a follower: writes are forwarded, reads bounded or via read index
phase "schemathesis against $target"
status=0
# (from the temporary dir: schemathesis keeps a crash cache in its working directory)
(cd "$work" && timeout 900 "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" --no-color \
  run "$target/v1/openapi.json" \
  --url "$target" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /v1/cluster/init \
  --exclude-path /v1/cluster/learners \
  --exclude-path /v1/cluster/voters \
  --exclude-path '/v1/cluster/members/{id}' \
  --exclude-path '/v1/namespaces/{ns}/watch' \
  --phases examples,coverage,fuzzing \
  --max-examples "${MAX_EXAMPLES:-20}" \
  --seed "${SEED:-1}" \
  --workers 1 \
  --request-timeout 10 \
  --generation-database none \
  --report junit --report-dir "$work/report") || status=$?

# The cluster must still be whole after the fuzzing.
for u in "${urls[@]}"; do
  curl -sf --max-time 5 "$u/healthz" >/dev/null || { echo "openapi: $u died during fuzzing" >&2; status=1; }
done
if [ "$status" = 0 ]; then
  phase "OpenAPI conformance: passed"
else
  phase "OpenAPI conformance: FAILED (exit $status)"
fi
exit "$status"
