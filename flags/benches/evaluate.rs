//! Evaluation benchmarks, each with the same rule through `datalogic-rs` (the JsonLogic engine
//! flagd's Rust provider uses) as the peer, in the same run.
//!
//! Ours measures a whole flag evaluation (lookup by key, targeting, variant resolution, typed
//! value); the peer measures only the rule evaluation against pre-parsed data with a reused
//! arena (its fastest documented path), so the comparison is conservative in the peer's favour.
//!
//! Run: `cargo bench -p flagstaff-flags`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use datalogic_rs::{Engine, ParsedData};
use flagstaff_flags::{Context, FlagSet};
use serde_json::{json, Value};

const TIMESTAMP: i64 = 1_700_000_000;

fn two_conditions() -> Value {
    json!({"if": [{"and": [
        {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
        {"ends_with": [{"var": "email"}, "@example.com"]}
    ]}, "on", "off"]})
}

fn staff_segment() -> Value {
    json!({"and": [
        {"ends_with": [{"var": "email"}, "@example.com"]},
        {"in": [{"var": "country"}, ["NL", "BE", "LU"]]}
    ]})
}

fn fifty_fifty() -> Value {
    json!({"fractional": [["on", 50], ["off", 50]]})
}

fn flag(targeting: Option<Value>) -> Value {
    let mut f = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
    if let Some(t) = targeting {
        f["targeting"] = t;
    }
    f
}

fn document() -> Value {
    let mut flags = serde_json::Map::new();
    flags.insert("static".into(), flag(None));
    flags.insert("two-conditions".into(), flag(Some(two_conditions())));
    flags.insert("fifty-fifty".into(), flag(Some(fifty_fifty())));
    flags.insert(
        "via-ref".into(),
        flag(Some(json!({"if": [{"$ref": "staff"}, "on", "off"]}))),
    );
    json!({"flags": flags, "$evaluators": {"staff": staff_segment()}})
}

/// 1,000 flags: a quarter each static, two-condition, 50/50 split and segment reference.
fn thousand_flags() -> (Value, Vec<Value>) {
    let mut flags = serde_json::Map::new();
    let mut rules = Vec::new();
    for i in 0..1000 {
        let rule = match i % 4 {
            0 => None,
            1 => Some(two_conditions()),
            2 => Some(fifty_fifty()),
            _ => Some(json!({"if": [{"$ref": "staff"}, "on", "off"]})),
        };
        // The peer gets the rule with the segment inlined, as flagd does before evaluating.
        rules.push(match (&rule, i % 4) {
            (None, _) => json!("off"),
            (Some(_), 3) => json!({"if": [staff_segment(), "on", "off"]}),
            (Some(r), _) => r.clone(),
        });
        flags.insert(format!("flag-{i:04}"), flag(rule));
    }
    (
        json!({"flags": flags, "$evaluators": {"staff": staff_segment()}}),
        rules,
    )
}

fn context_json(flag_key: &str) -> Value {
    json!({
        "targetingKey": "user-1234",
        "email": "jane@example.com",
        "plan": "enterprise",
        "country": "NL",
        "appVersion": "2.4.1",
        "$flagd": {"flagKey": flag_key, "timestamp": TIMESTAMP}
    })
}

fn ours_context() -> Context {
    let mut v = context_json("");
    if let Some(m) = v.as_object_mut() {
        m.remove("$flagd");
    }
    Context::from_json(&v, TIMESTAMP).expect("context")
}

fn bench(c: &mut Criterion) {
    let set = FlagSet::from_document(&document()).expect("document is valid");
    let ctx = ours_context();
    let engine = Engine::new();

    let cases: [(&str, &str, Value); 4] = [
        ("static_bool", "static", json!(true)),
        ("two_conditions", "two-conditions", two_conditions()),
        ("fractional_50_50", "fifty-fifty", fifty_fifty()),
        (
            "ref_segment",
            "via-ref",
            json!({"if": [staff_segment(), "on", "off"]}),
        ),
    ];
    for (name, key, peer_rule) in cases {
        let mut group = c.benchmark_group(name);
        let ours = set.boolean(key, &ctx, false);
        assert!(ours.error.is_none(), "{name}: {ours:?}");
        group.bench_function("flagstaff", |b| {
            b.iter(|| black_box(set.boolean(black_box(key), black_box(&ctx), false).value))
        });

        let logic = engine
            .compile(&peer_rule.to_string())
            .expect("peer compiles");
        let data = ParsedData::from_json(&context_json(key).to_string()).expect("peer data");
        let mut session = engine.session();
        {
            // The peer must compute the same answer, or the comparison means nothing.
            let r = session
                .eval_borrowed(&logic, &data)
                .expect("peer evaluates");
            let peer_variant = r
                .as_str()
                .map(str::to_string)
                .or_else(|| r.as_bool().map(|b| b.to_string()));
            let expected = match name {
                "static_bool" => Some("true".to_string()),
                _ => ours.variant.map(str::to_string),
            };
            assert_eq!(
                peer_variant, expected,
                "{name}: peer and flagstaff disagree"
            );
        }
        session.reset();
        group.bench_function("datalogic-rs", |b| {
            b.iter(|| {
                {
                    let r = session
                        .eval_borrowed(&logic, &data)
                        .expect("peer evaluates");
                    black_box(r.as_str().is_some());
                }
                session.reset();
            })
        });
        group.finish();
    }

    let (doc, peer_rules) = thousand_flags();
    let big = FlagSet::from_document(&doc).expect("1,000-flag document is valid");
    let keys: Vec<String> = (0..1000).map(|i| format!("flag-{i:04}")).collect();
    let mut group = c.benchmark_group("all_1000_flags");
    group.bench_function("flagstaff", |b| {
        b.iter(|| {
            let mut on = 0u32;
            for (_, r) in big.resolve_all(&ctx) {
                on += u32::from(r.value == Some(&Value::Bool(true)));
            }
            black_box(on)
        })
    });
    group.bench_function("flagstaff_by_key", |b| {
        b.iter(|| {
            let mut on = 0u32;
            for k in &keys {
                on += u32::from(big.boolean(k, &ctx, false).value);
            }
            black_box(on)
        })
    });
    let logics: Vec<_> = peer_rules
        .iter()
        .map(|r| engine.compile(&r.to_string()).expect("peer compiles"))
        .collect();
    // Each flag sees its own key in `$flagd.flagKey`, as in flagd.
    let datas: Vec<ParsedData> = keys
        .iter()
        .map(|k| ParsedData::from_json(&context_json(k).to_string()).expect("peer data"))
        .collect();
    let mut session = engine.session();
    group.bench_function("datalogic-rs", |b| {
        b.iter(|| {
            let mut on = 0u32;
            for (logic, data) in logics.iter().zip(&datas) {
                {
                    let r = session.eval_borrowed(logic, data).expect("peer evaluates");
                    on += u32::from(r.as_str() == Some("on"));
                }
                session.reset();
            }
            black_box(on)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
