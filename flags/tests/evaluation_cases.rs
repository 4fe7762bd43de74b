//! Runs the data-file tables: `cases/operators.json`, `cases/flags.json`, `cases/bucketing.json`,
//! `cases/bucketing_v3.json`.

use flagstaff_flags::{murmur3_x86_32, CompiledRule, Context, FlagSet};
use serde_json::{json, Map, Value};

const DEFAULT_TIMESTAMP: i64 = 1_700_000_000;

fn load(text: &str) -> Value {
    serde_json::from_str(text).expect("case file is valid JSON")
}

/// Numbers compare by value, so `1` and `1.0` are the same expectation.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn context(data: &Value, timestamp: i64) -> Context {
    match data {
        Value::Object(m) => Context::from_attributes(m.clone(), timestamp),
        _ => Context::new(timestamp),
    }
}

#[test]
fn operator_cases() {
    let table = load(include_str!("cases/operators.json"));
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 150, "the table lost cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case[0].as_str().unwrap_or("?");
        let options = case.get(4).cloned().unwrap_or(json!({}));
        let flag_key = options["flagKey"].as_str().unwrap_or("flag-key");
        let timestamp = options["timestamp"].as_i64().unwrap_or(DEFAULT_TIMESTAMP);
        let rule = match CompiledRule::compile(&case[1]) {
            Ok(r) => r,
            Err(faults) => {
                failures.push(format!("{name}: does not compile: {faults:?}"));
                continue;
            }
        };
        let got = match rule.evaluate(&context(&case[2], timestamp), flag_key) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if !same(&got, &case[3]) {
            failures.push(format!("{name}: expected {}, got {got}", case[3]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn flag_cases() {
    let table = load(include_str!("cases/flags.json"));
    let (set, faults) = FlagSet::from_document_lossy(&table["document"]);
    // Exactly the one deliberately broken flag is refused.
    assert!(!faults.is_empty());
    assert!(
        faults.iter().all(|f| f.path.starts_with("flags.broken")),
        "{faults:?}"
    );
    assert!(FlagSet::from_document(&table["document"]).is_err());

    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 45, "the table lost cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let key = case["flag"].as_str().expect("flag");
        let timestamp = case["timestamp"].as_i64().unwrap_or(DEFAULT_TIMESTAMP);
        let ctx = context(&case["context"], timestamp);
        let default = &case["default"];
        let (value, variant, reason, error, metadata): (
            Value,
            Option<&str>,
            &str,
            Option<&str>,
            &Map<String, Value>,
        ) = match case["type"].as_str() {
            Some("boolean") => {
                let e = set.boolean(key, &ctx, default.as_bool().expect("bool default"));
                (
                    json!(e.value),
                    e.variant,
                    e.reason.as_str(),
                    e.error_code().map(|c| c.as_str()),
                    e.metadata,
                )
            }
            Some("string") => {
                let e = set.string(key, &ctx, default.as_str().expect("string default"));
                (
                    json!(e.value),
                    e.variant,
                    e.reason.as_str(),
                    e.error_code().map(|c| c.as_str()),
                    e.metadata,
                )
            }
            Some("integer") => {
                let e = set.integer(key, &ctx, default.as_i64().expect("integer default"));
                (
                    json!(e.value),
                    e.variant,
                    e.reason.as_str(),
                    e.error_code().map(|c| c.as_str()),
                    e.metadata,
                )
            }
            Some("float") => {
                let e = set.float(key, &ctx, default.as_f64().expect("float default"));
                (
                    json!(e.value),
                    e.variant,
                    e.reason.as_str(),
                    e.error_code().map(|c| c.as_str()),
                    e.metadata,
                )
            }
            Some("object") => {
                let e = set.object(key, &ctx, default);
                (
                    e.value.clone(),
                    e.variant,
                    e.reason.as_str(),
                    e.error_code().map(|c| c.as_str()),
                    e.metadata,
                )
            }
            Some("any") => {
                let r = set.resolve(key, &ctx);
                let code = r.error.as_ref().map(|e| e.code.as_str());
                (
                    r.value.cloned().unwrap_or(Value::Null),
                    r.variant,
                    r.reason.as_str(),
                    code,
                    r.metadata,
                )
            }
            other => panic!("{name}: unknown type {other:?}"),
        };
        let expect = &case["expect"];
        let mut check = |what: &str, got: Value, want: &Value| {
            if !same(&got, want) {
                failures.push(format!("{name}: {what}: expected {want}, got {got}"));
            }
        };
        if let Some(v) = expect.get("value") {
            check("value", value, v);
        }
        if let Some(v) = expect.get("variant") {
            check("variant", json!(variant), v);
        }
        check("reason", json!(reason), &expect["reason"]);
        check("error", json!(error), &expect["error"]);
        if let Some(m) = expect.get("metadata") {
            check("metadata", Value::Object(metadata.clone()), m);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The variant a flag splitting by the vector's `weights` with `algorithm` gives its user:
/// bucketed by `bucketBy` (read from a context attribute), else by the targeting key.
fn split_variant(v: &Value, algorithm: &str) -> Result<Option<String>, String> {
    let flag_key = v["flagKey"].as_str().expect("flagKey");
    let mut buckets: Vec<Value> = v["weights"].as_array().expect("weights").clone();
    let variants: Map<String, Value> = buckets
        .iter()
        .map(|b| (b[0].as_str().expect("name").to_string(), json!(true)))
        .collect();
    let mut ctx = Context::new(DEFAULT_TIMESTAMP);
    if let Some(b) = v.get("bucketBy") {
        buckets.insert(0, json!({"var": "bucket"}));
        ctx = ctx.with_attribute("bucket", b.clone());
    } else if let Some(tk) = v["targetingKey"].as_str() {
        ctx = ctx.with_targeting_key(tk);
    }
    let def = json!({"state": "ENABLED", "variants": variants,
        "fractionalAlgorithm": algorithm, "targeting": {"fractional": buckets}});
    let set =
        FlagSet::from_document(&json!({"flags": {flag_key: def}})).map_err(|f| format!("{f:?}"))?;
    Ok(set.resolve(flag_key, &ctx).variant.map(str::to_string))
}

#[test]
fn bucketing_vectors() {
    let table = load(include_str!("cases/bucketing.json"));
    let vectors = table["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 40, "the table lost vectors");
    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let flag_key = v["flagKey"].as_str().expect("flagKey");
        let expected = v["variant"].as_str().expect("variant");
        // The hash itself is frozen, not just the variant it lands on.
        let input = match (v["bucketBy"].as_str(), v["targetingKey"].as_str()) {
            (Some(b), _) => b.to_string(),
            (None, Some(tk)) => format!("{flag_key}{tk}"),
            _ => panic!("vector {i} has neither bucketBy nor targetingKey"),
        };
        let hash = murmur3_x86_32(&[input.as_bytes()], 0);
        if Some(u64::from(hash)) != v["hash"].as_u64() {
            failures.push(format!(
                "vector {i}: hash of {input:?} is {hash}, frozen {}",
                v["hash"]
            ));
        }
        // And through the evaluator: a flag whose targeting is this split.
        match split_variant(v, "v2") {
            Ok(got) if got.as_deref() == Some(expected) => {}
            other => failures.push(format!(
                "vector {i} ({input:?}): expected {expected}, got {other:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `fractionalAlgorithm: "v3"`: the variant the Python provider's evaluator gives for every
/// vector (through a flag), and the table's own hashes of its frozen CBOR bytes.
#[test]
fn bucketing_v3_vectors() {
    let table = load(include_str!("cases/bucketing_v3.json"));
    let vectors = table["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 45, "the table lost vectors");
    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let expected = v["variant"].as_str().expect("variant");
        let hex = v["cbor"].as_str().expect("cbor");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&hex[j..j + 2], 16).expect("hex"))
            .collect();
        let hash = murmur3_x86_32(&[&bytes], 0);
        if Some(u64::from(hash)) != v["hash"].as_u64() {
            failures.push(format!(
                "vector {i}: hash of {hex} is {hash}, frozen {}",
                v["hash"]
            ));
        }
        match split_variant(v, "v3") {
            Ok(got) if got.as_deref() == Some(expected) => {}
            other => failures.push(format!(
                "vector {i} ({}): expected {expected}, got {other:?}",
                v.get("bucketBy").unwrap_or(&v["targetingKey"])
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same user lands differently under v2 and v3 (the two are not the same hash), and a
/// flag without `fractionalAlgorithm` is v2.
#[test]
fn fractional_algorithm_is_per_flag() {
    let split = json!({"fractional": [["heads", 1], ["tails", 1]]});
    let doc = json!({"flags": {
        "fractional-flag-shorthand": {"state": "ENABLED", "variants": {"heads": 1, "tails": 2},
            "targeting": split},
    }});
    let v2 = FlagSet::from_document(&doc).expect("valid");
    let mut doc3 = doc.clone();
    doc3["flags"]["fractional-flag-shorthand"]["fractionalAlgorithm"] = json!("v3");
    let v3 = FlagSet::from_document(&doc3).expect("valid");
    let ctx = Context::new(DEFAULT_TIMESTAMP).with_targeting_key("jon@company.com");
    // The testbed's shorthand case: heads under v2, tails under v3.
    assert_eq!(
        v2.resolve("fractional-flag-shorthand", &ctx).variant,
        Some("heads")
    );
    assert_eq!(
        v3.resolve("fractional-flag-shorthand", &ctx).variant,
        Some("tails")
    );
    let mut bad = doc.clone();
    bad["flags"]["fractional-flag-shorthand"]["fractionalAlgorithm"] = json!("v4");
    let faults = FlagSet::from_document(&bad).expect_err("v4 is not an algorithm");
    assert!(
        format!("{faults:?}").contains("fractionalAlgorithm"),
        "{faults:?}"
    );
}
