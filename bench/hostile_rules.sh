#!/usr/bin/env bash
# Hostile but valid definitions against a live 3-node cluster of `flagstaff cluster up` (its own
# temporary data dir, loopback ports 7711-7713 and 7811-7813), then stopped by its PID:
#   1. a flag whose targeting doubles a string per context item, evaluated on every node over
#      OFREP: the answer is ERROR/GENERAL at once, the nodes' peak RSS and /healthz are shown;
#   2. a chain of $ref links: refused with 400 at the chain limit; then 2,500 flags over 2,500
#      segments in chains of 8: segment write latency and the first OFREP evaluation after it.
# Usage: bash bench/hostile_rules.sh   (FLAGSTAFF_BIN, default target/debug/flagstaff)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${FLAGSTAFF_BIN:-${CARGO_TARGET_DIR:-target}/debug/flagstaff}"
D=$(mktemp -d /tmp/flagstaff-hostile.XXXX)
$BIN cluster up --data-dir "$D" --client-port 7711 --peer-port 7811 --sync-port 7911 > "$D/log" 2>&1 &
CL=$!
trap 'kill $CL 2>/dev/null; wait $CL 2>/dev/null || true; rm -rf "$D"' EXIT
for i in $(seq 1 100); do [ -s "$D/admin.token" ] && curl -sf http://127.0.0.1:7711/healthz >/dev/null && break; sleep 0.5; done
T=$(cat "$D/admin.token"); A=http://127.0.0.1:7711
h() { curl -s -H "Authorization: Bearer $T" -H 'content-type: application/json' "$@"; }
h -X PUT $A/v1/namespaces/repro -d '{}' >/dev/null
KEY=$(h -X POST $A/v1/namespaces/repro/sdk-keys -d '{"name":"r"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["secret"])')
echo "== 1. reduce/cat doubling flag via PUT …/flagd"
h -X PUT $A/v1/namespaces/repro/flagd -d '{"flags":{"hostile":{"state":"ENABLED","variants":{"a":"a","b":"b"},"defaultVariant":"a","targeting":{"if":[{"==":[{"reduce":[{"var":"items"},{"cat":[{"var":"accumulator"},{"var":"accumulator"}]},"ab"]},"x"]},"a","b"]}}}}' -w ' HTTP %{http_code}\n'
ITEMS=$(python3 -c 'import json;print(json.dumps(list(range(64))))')
for n in 1 2 3; do
  curl -s -H "Authorization: Bearer $KEY" -H 'content-type: application/json' "http://127.0.0.1:$((7710+n))/ofrep/v1/evaluate/flags/hostile" -d "{\"context\":{\"targetingKey\":\"u\",\"items\":$ITEMS}}" -w " HTTP %{http_code} in %{time_total}s\n" || true
done
curl -s http://127.0.0.1:7711/healthz -w ' healthz %{http_code}\n'
for p in $(pgrep -P $CL); do echo "node pid $p: $(grep -E 'VmHWM|VmRSS' /proc/$p/status | tr -s ' ' | tr '\n' ' ')"; done
echo "== 2. 2,500 segments chained by \$ref (one chain)"
python3 - "$A" "$T" <<'PY'
import json, sys, time, urllib.request
A, T = sys.argv[1], sys.argv[2]
def req(method, path, body):
    r = urllib.request.Request(A + path, data=json.dumps(body).encode(), method=method,
        headers={"Authorization": "Bearer " + T, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(r) as resp: return resp.status, json.load(resp)
    except urllib.error.HTTPError as e: return e.code, json.load(e)
req("PUT", "/v1/namespaces/chain", {})
st, b = req("PUT", "/v1/namespaces/chain/segments/s0", {"==": [{"var": "x"}, 1]})
refused = None
t0 = time.time()
for i in range(1, 2500):
    st, b = req("PUT", f"/v1/namespaces/chain/segments/s{i}", {"and": [{"$ref": f"s{i-1}"}, {"!=": [{"var": "y"}, i]}]})
    if st != 200:
        refused = (i, st, b["error"]["faults"])
        break
print(f"chain: links accepted up to s{refused[0]-1 if refused else 2499}; then {refused}")
# 2,500 segments in chains of 8 (all valid), one write each, timed; then evaluation after a change.
req("PUT", "/v1/namespaces/wide", {})
segs = {}
for i in range(2500):
    segs[f"s{i}"] = {"==": [{"var": "x"}, i]} if i % 8 == 0 else {"and": [{"$ref": f"s{i-1}"}, {"!=": [{"var": "y"}, i]}]}
flags = {f"f{i}": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off",
          "targeting": {"if": [{"$ref": f"s{i}"}, "on", "off"]}} for i in range(2500)}
t = time.time(); st, b = req("PUT", "/v1/namespaces/wide/flagd", {"flags": flags, "$evaluators": segs})
print(f"import 2,500 flags + 2,500 segments: HTTP {st} in {time.time()-t:.2f}s")
st, k = req("POST", "/v1/namespaces/wide/sdk-keys", {"name": "w"})
key = k["secret"]
ws, es = [], []
for n in range(20):
    i = 8 * n + 7
    t = time.time(); st, b = req("PUT", f"/v1/namespaces/wide/segments/s{i}", {"and": [{"$ref": f"s{i-1}"}, {"!=": [{"var": "y"}, -n - 1]}]}); ws.append(time.time() - t)
    rev = b["revision"]
    r = urllib.request.Request(f"http://127.0.0.1:7712/ofrep/v1/evaluate/flags/f{i}?min_revision={rev}", data=json.dumps({"context": {"x": 8*n, "y": 0}}).encode(), method="POST", headers={"Authorization": "Bearer " + key, "content-type": "application/json"})
    t = time.time(); body = json.load(urllib.request.urlopen(r)); es.append(time.time() - t)
    assert body["value"] is True, body
ws.sort(); es.sort()
print(f"segment write: median {ws[10]*1e3:.1f} ms, max {ws[-1]*1e3:.1f} ms; first OFREP evaluation after it on node 2: median {es[10]*1e3:.1f} ms, max {es[-1]*1e3:.1f} ms")
PY
