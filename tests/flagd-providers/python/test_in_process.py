"""The stock Python flagd provider, in-process, against a live Flagstaff cluster's sync listener.

Environment (set by ../run.sh): ADDRESSES (a gRPC `ipv4:` list of the three nodes' sync
addresses, the provider's node first), CA (the cluster's CA file), NS, SDK_KEY, KEYLESS_NS (a
namespace served without a key), ADMIN_URL (a node other than the provider's), TOKEN (admin),
KILL_PID (the pid of the provider's node, killed halfway), OFREP_URL (a node's client URL),
ASSIGNED (a JSON file of what flagstaff-client assigns user-0… in the `split` flag).
The provider sends the SDK key as gRPC call credentials on a TLS channel trusting the CA.
"""

import http.client
import json
import os
import signal
import sys
import time
import urllib.parse

import grpc
from common import admin, https
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

addresses = os.environ["ADDRESSES"]
ports = [int(a.rsplit(":", 1)[1]) for a in addresses.split(",")]
ns, key, keyless = os.environ["NS"], os.environ["SDK_KEY"], os.environ["KEYLESS_NS"]
with open(os.environ["CA"], "rb") as f:
    ca = f.read()
failures = []


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what)


def with_key(k):
    tls = grpc.ssl_channel_credentials(root_certificates=ca)
    if k is None:
        return tls
    return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(k))


def first_message(port, selector, creds, timeout=5, metadata=()):
    """The first SyncFlags message, or the gRPC error that ended the stream."""
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
    try:
        for m in stub.SyncFlags(
            sync_pb2.SyncFlagsRequest(),
            metadata=(("flagd-selector", selector),) + metadata,
            timeout=timeout,
        ):
            return m
    except grpc.RpcError as e:
        return e
    finally:
        channel.close()


def code(m):
    return m.code() if isinstance(m, grpc.RpcError) else m


# host:port is the channel's target: every node's address, the port of the last one separately.
host, port = addresses.rsplit(":", 1)
provider = FlagdProvider(
    resolver_type=ResolverType.IN_PROCESS,
    host=host,
    port=int(port),
    default_authority="localhost",
    retry_backoff_max_ms=2000,
    selector=f"flagSetId={ns}",
    channel_credentials=with_key(key),
    deadline_ms=5000,
)
api.set_provider(provider)
client = api.get_client()
deadline = time.time() + 15
while time.time() < deadline and client.get_boolean_value("bool-flag", False) is not True:
    time.sleep(0.05)

d = client.get_boolean_details("bool-flag", False)
check("boolean", d.value is True and d.variant == "on", d)
check("string", client.get_string_value("string-flag", "x") == "blue")
check("integer", client.get_integer_value("int-flag", 0) == 42)
check("float", client.get_float_value("float-flag", 0.0) == 2.0)
obj = client.get_object_value("object-flag", {})
check("object", obj == {"theme": "dark", "retries": 3}, obj)
internal = EvaluationContext(targeting_key="u1", attributes={"email": "a@example.com"})
check("targeting", client.get_string_value("targeted-flag", "x", internal) == "internal")
check("targeting, no match", client.get_string_value("targeted-flag", "x") == "external")
beta = EvaluationContext(targeting_key="u2", attributes={"plan": "beta"})
check("$ref segment", client.get_string_value("segment-flag", "x", beta) == "beta-ui")
check("$ref segment, outside", client.get_string_value("segment-flag", "x") == "classic-ui")
dis = client.get_boolean_details("disabled-flag", False)
# Disabled: the default variant's value, as OFREP and flagstaff-client answer (sent to the
# provider as that variant, so it says STATIC).
check("disabled flag: the default variant, as the service answers", dis.value is True and dis.variant == "on", dis)
meta = d.flag_metadata or {}
check("revision in flag metadata", isinstance(meta.get("flagstaffRevision"), (int, float)), meta)

# `fractional` (v3 in this namespace, as this provider hashes): every user gets the variant
# that flagstaff-client and OFREP give.
with open(os.environ["ASSIGNED"]) as f:
    assigned = json.load(f)
ofrep_url = urllib.parse.urlsplit(os.environ["OFREP_URL"])
ofrep = http.client.HTTPSConnection(ofrep_url.hostname, ofrep_url.port, context=https, timeout=10)
differ, first_diff = 0, ""
for user, rust in assigned.items():
    here = client.get_string_value("split", "x", EvaluationContext(targeting_key=user))
    ofrep.request(
        "POST",
        "/ofrep/v1/evaluate/flags/split",
        body=json.dumps({"context": {"targetingKey": user}}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    there = json.load(ofrep.getresponse())["value"]
    if not here == there == rust:
        differ += 1
        first_diff = first_diff or f"{user}: provider {here}, OFREP {there}, flagstaff-client {rust}"
ofrep.close()
check(
    f"fractional v3: provider, OFREP and flagstaff-client agree for {len(assigned)} users",
    differ == 0 and len(assigned) >= 10000,
    f"{differ} differ ({first_diff})",
)

# A write through another node reaches the in-process evaluator: time it.
admin("PATCH", f"/v1/namespaces/{ns}/flags/flip", {"defaultVariant": "new"})
t0 = time.time()
while time.time() < t0 + 10 and client.get_string_value("flip", "x") != "after":
    time.sleep(0.005)
latency = time.time() - t0
check("a write through another node arrives within 1 s", latency < 1.0, f"{latency:.3f} s")
print(f"write -> in-process python provider: {latency * 1000:.0f} ms")

# No key, a foreign selector, and a revoked key.
check("no key: UNAUTHENTICATED", code(first_message(ports[1], f"flagSetId={ns}", with_key(None))) == grpc.StatusCode.UNAUTHENTICATED)
# The key-less namespace splits with v2: refused to this (v3) provider, with the reason.
m = first_message(ports[1], f"flagSetId={keyless}", with_key(None))
check(
    "a namespace split with v2 is refused to a v3 provider: FAILED_PRECONDITION naming the flag",
    code(m) == grpc.StatusCode.FAILED_PRECONDITION and "split (v2)" in m.details(),
    m,
)
m = first_message(ports[1], f"flagSetId={keyless}", with_key(None), metadata=(("flagstaff-fractional", "v2"),))
check("a key-less namespace streams without a key (to a client declaring v2)", not isinstance(m, grpc.RpcError), m)
check("unknown namespace: NOT_FOUND", code(first_message(ports[1], "flagSetId=nope", with_key(key))) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED))
check("bad selector: INVALID_ARGUMENT", code(first_message(ports[1], "app=x", with_key(key))) == grpc.StatusCode.INVALID_ARGUMENT)
other = admin("POST", f"/v1/namespaces/{ns}/sdk-keys", {"name": "short-lived"})["secret"]
channel = grpc.secure_channel(f"127.0.0.1:{ports[2]}", with_key(other))
stream = sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(
    sync_pb2.SyncFlagsRequest(), metadata=(("flagd-selector", ns),), timeout=30
)
first = next(stream)
check("second key streams", json.loads(first.flag_configuration)["flags"].get("bool-flag") is not None)
admin("DELETE", f"/v1/namespaces/{ns}/sdk-keys/short-lived")
ended = None
try:
    for _ in stream:
        pass
except grpc.RpcError as e:
    ended = e.code()
check("a revoked key loses its stream", ended == grpc.StatusCode.PERMISSION_DENIED, ended)
channel.close()

# The provider's node is killed: the provider keeps its values, moves to the next address and
# gets the changes written after.
os.kill(int(os.environ["KILL_PID"]), signal.SIGKILL)
t0 = time.time()
kept = True
while time.time() < t0 + 1.0:
    kept = kept and client.get_string_value("flip", "x") == "after" and client.get_integer_value("int-flag", 0) == 42
    time.sleep(0.01)
check("the last values are kept while the node is gone", kept)
admin("PATCH", f"/v1/namespaces/{ns}/flags/later", {"defaultVariant": "new"})
t1 = time.time()
while time.time() < t1 + 30 and client.get_string_value("later", "x") != "after":
    time.sleep(0.01)
moved = time.time() - t1
check("a write after the kill arrives through another node", client.get_string_value("later", "x") == "after", f"{moved:.1f} s")
print(f"kill -> python provider following another node: {time.time() - t0:.1f} s")
api.shutdown()
if failures:
    sys.exit(f"{len(failures)} failed: {failures}")
print("all passed")
