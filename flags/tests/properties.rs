//! Property tests: nothing panics on arbitrary JSON, validation and compilation agree, and
//! bucketing is stable, uniform and monotone when a rollout widens.

use flagstaff_flags::{
    find_ref_cycle, flag_refs, rule_refs, validate_document, validate_flag, validate_segment,
    CompiledRule, Context, FlagSet,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const OPERATORS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "cat",
    "substr",
    "+",
    "-",
    "*",
    "/",
    "%",
    "min",
    "max",
    "merge",
    "map",
    "filter",
    "reduce",
    "all",
    "some",
    "none",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
    "$ref",
    "state",
    "variants",
    "defaultVariant",
    "targeting",
    "flags",
    "$evaluators",
    "metadata",
    "targetingKey",
    "$flagd.flagKey",
    "$flagd.timestamp",
    "on",
    "off",
    "true",
    "",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(OPERATORS).prop_map(str::to_string),
        1 => "[a-z.]{0,6}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        Just(json!(2147483647u64)),
        Just(json!(-1)),
        proptest::sample::select(OPERATORS).prop_map(|s| json!(s)),
        "[a-z0-9@.\\-]{0,8}".prop_map(Value::String),
        Just(json!("1.2.3")),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            (key(), inner.clone()).prop_map(|(k, v)| json!({ k: v })),
            proptest::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_context() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(key(), any_json(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics(v in any_json()) {
        let _ = validate_flag(&v);
        let _ = validate_segment(&v);
        let _ = validate_document(&v);
        let _ = validate_document(&json!({"flags": {"f": v.clone()}, "$evaluators": {"s": v.clone()}}));
        let _ = flag_refs(&v);
        let _ = rule_refs(&v);
    }

    #[test]
    fn rules_compile_and_evaluate_without_panicking(rule in any_json(), data in any_context()) {
        if let Ok(r) = CompiledRule::compile(&rule) {
            let ctx = Context::from_json(&data, 1_700_000_000).unwrap_or_else(|_| Context::new(0));
            let _ = r.evaluate(&ctx, "k");
        }
    }

    #[test]
    fn flags_evaluate_without_panicking(targeting in any_json(), segment in any_json(), data in any_context()) {
        let doc = json!({
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false, "true": true}, "defaultVariant": "off", "targeting": targeting}},
            "$evaluators": {"s": segment, "on": {"$ref": "s"}}
        });
        let (set, _) = FlagSet::from_document_lossy(&doc);
        let ctx = Context::from_json(&data, 1_700_000_000).unwrap_or_else(|_| Context::new(0));
        let r = set.resolve("f", &ctx);
        // An error always carries a code, and only errors do.
        prop_assert_eq!(r.error.is_some(), r.reason == flagstaff_flags::Reason::Error);
        let _ = set.boolean("f", &ctx, false);
        let _ = set.string("f", &ctx, "");
        let _ = set.integer("f", &ctx, 0);
        let _ = set.float("f", &ctx, 0.0);
        let _ = set.object("f", &ctx, &Value::Null);
    }

    /// Whatever the document, `validate_document` accepts it exactly when it compiles cleanly.
    #[test]
    fn validation_agrees_with_compilation(targeting in any_json(), segment in any_json(), default in leaf()) {
        let doc = json!({
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default, "targeting": targeting}},
            "$evaluators": {"s": segment}
        });
        prop_assert_eq!(validate_document(&doc).is_ok(), FlagSet::from_document(&doc).is_ok());
    }

    #[test]
    fn ref_cycles_are_found_or_absent_without_panicking(edges in proptest::collection::vec((0u8..6, 0u8..6), 0..12)) {
        let mut segments: BTreeMap<String, Value> = BTreeMap::new();
        for i in 0..6u8 {
            let refs: Vec<Value> = edges.iter().filter(|(a, _)| *a == i).map(|(_, b)| json!({"$ref": format!("s{b}")})).collect();
            segments.insert(format!("s{i}"), json!({"or": refs}));
        }
        for i in 0..6u8 {
            if let Some(cycle) = find_ref_cycle(&segments, &format!("s{i}")) {
                prop_assert!(cycle.len() >= 2);
                prop_assert_eq!(cycle.first(), cycle.last());
                // Every step of the reported cycle is a real edge.
                for w in cycle.windows(2) {
                    let a: u8 = w[0][1..].parse().unwrap_or(99);
                    let b: u8 = w[1][1..].parse().unwrap_or(99);
                    prop_assert!(edges.contains(&(a, b)));
                }
            }
        }
    }

    /// A user keeps their variant: evaluating twice, or in a set built separately, agrees.
    #[test]
    fn bucketing_is_stable(tk in ".{1,40}", w1 in 0u32..1000, w2 in 1u32..1000) {
        let doc = json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
            "targeting": {"fractional": [["a", w1], ["b", w2]]}}}});
        let one = FlagSet::from_document(&doc).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let two = FlagSet::from_document(&doc).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let ctx = Context::new(0).with_targeting_key(tk);
        let first = one.resolve("f", &ctx).variant;
        prop_assert!(first.is_some());
        prop_assert_eq!(first, one.resolve("f", &ctx).variant);
        prop_assert_eq!(first, two.resolve("f", &ctx).variant);
    }

    /// Widening a rollout (raising the first variant's share of a fixed total) never moves a
    /// user who was in it out of it.
    #[test]
    fn widening_a_rollout_keeps_everyone_in(tk in "[a-zA-Z0-9@.\\-]{1,30}", p in 0u32..=100, extra in 0u32..=100) {
        let q = (p + extra).min(100);
        let set = |on: u32| {
            let doc = json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"fractional": [["on", on], ["off", 100 - on]]}}}});
            FlagSet::from_document(&doc).expect("valid")
        };
        let (narrow, wide) = (set(p), set(q));
        let ctx = Context::new(0).with_targeting_key(tk);
        if narrow.boolean("f", &ctx, false).value {
            prop_assert!(wide.boolean("f", &ctx, false).value);
        }
    }
}

/// Over 100,000 keys each variant's share is within 1 percentage point of its weight
/// (the standard error at n = 100,000 is about 0.16 points; 1 point is over 6 of them).
#[test]
fn bucketing_is_uniform() {
    for weights in [
        vec![50u32, 50],
        vec![25, 25, 25, 25],
        vec![10, 90],
        vec![1, 2, 3, 4],
    ] {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("v{i}")).collect();
        let buckets: Vec<Value> = names
            .iter()
            .zip(&weights)
            .map(|(n, w)| json!([n, w]))
            .collect();
        let variants: Map<String, Value> = names.iter().map(|n| (n.clone(), json!(n))).collect();
        let doc = json!({"flags": {"f": {"state": "ENABLED", "variants": variants, "defaultVariant": "v0",
            "targeting": {"fractional": buckets}}}});
        let set = FlagSet::from_document(&doc).expect("valid");
        let n = 100_000;
        let mut counts = vec![0u32; weights.len()];
        for i in 0..n {
            let ctx = Context::new(0).with_targeting_key(format!("user-{i}"));
            let r = set.resolve("f", &ctx);
            let v = r.variant.expect("a variant");
            let idx: usize = v[1..].parse().expect("index");
            counts[idx] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, c) in counts.iter().enumerate() {
            let share = f64::from(*c) / f64::from(n);
            let expected = f64::from(weights[i]) / f64::from(total);
            assert!(
                (share - expected).abs() < 0.01,
                "weights {weights:?}: variant {i} got {share:.4}, expected {expected:.4}"
            );
        }
    }
}
