"""Writes bucketing_v3.json: fractional v3 vectors computed by the Python provider's own evaluator.

    python3 -m venv /tmp/v3 && /tmp/v3/bin/pip install openfeature-flagd-core==2.0.0
    /tmp/v3/bin/python flags/tests/cases/bucketing_v3.py > flags/tests/cases/bucketing_v3.json

Each vector's variant is what `openfeature-flagd-core`'s `fractional` answers; `cbor` and `hash`
are the bytes it hashes and their MurmurHash3, so a failure says which step differs.
"""

import json

import cbor2
import mmh3
from openfeature.contrib.tools.flagd.core.targeting.custom_ops import (
    fractional,
    normalize_numbers,
)

SUITS = [["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]
ABC = [["a", 1], ["b", 2], ["c", 3]]


def vector(flag_key, weights, source, bucket_by=None, targeting_key=None):
    data = {"$flagd": {"flagKey": flag_key}}
    if targeting_key is not None:
        data["targetingKey"] = targeting_key
        value = [flag_key, targeting_key]
        args = [tuple(w) for w in weights]
    else:
        value = bucket_by
        args = [bucket_by] + [tuple(w) for w in weights]
    encoded = cbor2.dumps(normalize_numbers(value), canonical=True)
    out = {"flagKey": flag_key}
    if targeting_key is not None:
        out["targetingKey"] = targeting_key
    else:
        out["bucketBy"] = bucket_by
    out.update(
        weights=weights,
        cbor=encoded.hex(),
        hash=mmh3.hash(encoded, signed=False),
        variant=fractional(data, *args),
        source=source,
    )
    return out


vectors = []
# The testbed's gherkin cases (evaluation/targeting.feature, @fractional-v3), whose bucketing
# value is {"cat": [flagKey or "shared-seed", user.name]}.
for name in ["jack", "queen", "ten", "nine", "3"]:
    vectors.append(vector("fractional-flag", SUITS, "flagd-testbed fractional-v3",
                          bucket_by="fractional-flag" + name))
for name in ["seven", "eight", "nine", "two"]:
    vectors.append(vector("fractional-flag-A-shared-seed", SUITS, "flagd-testbed fractional-v3",
                          bucket_by="shared-seed" + name))
for tk in ["jon@company.com", "jane@company.com", "user-1", "user-2", "user-3"]:
    vectors.append(vector("fractional-flag-shorthand", [["heads", 1], ["tails", 1]],
                          "flagd-testbed fractional-v3", targeting_key=tk))
# The split the README's example uses, and users the v2 table also has.
for i in range(1, 11):
    vectors.append(vector("banner-color", [["red", 50], ["blue", 50]],
                          "openfeature-flagd-core 2.0.0", targeting_key=f"user-{i}"))
# Keys whose CBOR heads have every length: 23 and 24 bytes (1- and 2-byte heads), 256 bytes.
for tk in ["x" * 23, "x" * 24, "y" * 255, "y" * 256, "ü-ñ-日本", ""]:
    vectors.append(vector("k", [["on", 50], ["off", 50]], "openfeature-flagd-core 2.0.0",
                          bucket_by=tk))
# Non-string bucketing values: hashed as themselves, not as their text.
for value in [0, 1, 23, 24, -1, -25, 42, 4294967296, -9223372036854775808,
              18446744073709551615, 2.0, 1.5, 0.1, -2.75, 1e300, True, False,
              {"org": "acme", "id": 7}, {"b": 1, "aa": [1, 2], "a": {"z": None}}]:
    vectors.append(vector("any", ABC, "openfeature-flagd-core 2.0.0", bucket_by=value))

print(json.dumps({
    "about": "Frozen fractional v3 vectors (fractionalAlgorithm \"v3\"): hash = murmur3_x86_32 "
             "(seed 0) of the canonical CBOR of bucketBy, or of [flagKey, targetingKey]; "
             "bucket = (hash * total_weight) >> 32. Written by bucketing_v3.py with the Python "
             "provider's evaluator (openfeature-flagd-core 2.0.0); `source` says where the case "
             "comes from.",
    "vectors": vectors,
}, indent=1, ensure_ascii=False))
