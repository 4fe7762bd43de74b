//! Flag evaluation next to the two in-process engines users would pick instead, on
//! equivalent rules, in one criterion run:
//!
//! - `flagstaff`: `flagstaff-flags`, a whole flag evaluation (lookup by key, targeting, variant,
//!   typed value);
//! - `datalogic-rs`: the JsonLogic engine of flagd's Rust provider, rule only, pre-parsed data
//!   and a reused arena (its fastest path);
//! - `yggdrasil`: Unleash's Rust engine (`unleash-yggdrasil`), `is_enabled` with the same
//!   conditions as Unleash constraints, segments and a gradual rollout.
//!
//! Group names start with `peer_`; `bench/src/bin/report.rs` reads criterion's estimates.
//! Run: `cargo bench --workspace --locked --bench peers` (see bench/README.md).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use datalogic_rs::{Engine, ParsedData};
use flagstaff_flags::{Context, FlagSet};
use serde_json::{json, Value};
use unleash_yggdrasil::{ClientFeatures, EngineState};

const TIMESTAMP: i64 = 1_700_000_000;
const USER: &str = "user-1234";

/// The four rule shapes, each in the three engines' languages.
#[derive(Clone, Copy, PartialEq)]
enum Rule {
    Static,
    TwoConditions,
    FiftyFifty,
    Segment,
}

fn two_conditions() -> Value {
    json!({"and": [
        {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
        {"ends_with": [{"var": "email"}, "@example.com"]}
    ]})
}

fn staff_segment() -> Value {
    json!({"and": [
        {"ends_with": [{"var": "email"}, "@example.com"]},
        {"in": [{"var": "country"}, ["NL", "BE", "LU"]]}
    ]})
}

/// Flagstaff (flagd) definition.
fn ours(rule: Rule) -> Value {
    let mut f = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
    match rule {
        Rule::Static => f["defaultVariant"] = json!("on"),
        Rule::TwoConditions => f["targeting"] = json!({"if": [two_conditions(), "on", "off"]}),
        Rule::FiftyFifty => f["targeting"] = json!({"fractional": [["on", 50], ["off", 50]]}),
        Rule::Segment => f["targeting"] = json!({"if": [{"$ref": "staff"}, "on", "off"]}),
    }
    f
}

/// The JsonLogic rule flagd evaluates (segment inlined, as flagd does before evaluating).
fn datalogic(rule: Rule) -> Value {
    match rule {
        Rule::Static => json!("on"),
        Rule::TwoConditions => json!({"if": [two_conditions(), "on", "off"]}),
        Rule::FiftyFifty => json!({"fractional": [["on", 50], ["off", 50]]}),
        Rule::Segment => json!({"if": [staff_segment(), "on", "off"]}),
    }
}

/// An Unleash feature toggle with the same meaning.
fn unleash(name: &str, rule: Rule) -> Value {
    let plan = json!({"contextName": "plan", "operator": "IN", "values": ["pro", "enterprise"]});
    let email =
        json!({"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]});
    let strategy = match rule {
        Rule::Static => json!({"name": "default"}),
        Rule::TwoConditions => json!({"name": "default", "constraints": [plan, email]}),
        Rule::FiftyFifty => json!({"name": "flexibleRollout",
            "parameters": {"rollout": "50", "stickiness": "default", "groupId": name}}),
        Rule::Segment => json!({"name": "default", "segments": [1]}),
    };
    json!({"name": name, "enabled": true, "strategies": [strategy]})
}

fn unleash_segments() -> Value {
    json!([{"id": 1, "constraints": [
        {"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]},
        {"contextName": "country", "operator": "IN", "values": ["NL", "BE", "LU"]}
    ]}])
}

fn context_json(flag_key: &str) -> Value {
    json!({
        "targetingKey": USER,
        "email": "jane@example.com",
        "plan": "enterprise",
        "country": "NL",
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

fn unleash_context() -> unleash_yggdrasil::Context {
    serde_json::from_value(json!({
        "userId": USER,
        "properties": {"email": "jane@example.com", "plan": "enterprise", "country": "NL"}
    }))
    .expect("unleash context")
}

fn rule_of(i: usize) -> Rule {
    [
        Rule::Static,
        Rule::TwoConditions,
        Rule::FiftyFifty,
        Rule::Segment,
    ][i % 4]
}

/// `keys` with their rules in all three forms.
fn engines(keys: &[(String, Rule)]) -> (FlagSet, EngineState) {
    let mut flags = serde_json::Map::new();
    let mut toggles = Vec::new();
    for (k, r) in keys {
        flags.insert(k.clone(), ours(*r));
        toggles.push(unleash(k, *r));
    }
    let set =
        FlagSet::from_document(&json!({"flags": flags, "$evaluators": {"staff": staff_segment()}}))
            .expect("document is valid");
    let features: ClientFeatures = serde_json::from_value(json!({
        "version": 2, "features": toggles, "segments": unleash_segments()
    }))
    .expect("unleash features");
    let engine = EngineState::default();
    if let Some(warnings) =
        engine.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(features))
    {
        assert!(
            warnings.is_empty(),
            "yggdrasil warnings: {} toggles",
            warnings.len()
        );
    }
    (set, engine)
}

fn bench(c: &mut Criterion) {
    let ctx = ours_context();
    let uctx = unleash_context();
    let dl = Engine::new();
    let cases = [
        ("peer_static_bool", "static", Rule::Static),
        ("peer_two_conditions", "two-conditions", Rule::TwoConditions),
        ("peer_fractional_50_50", "fifty-fifty", Rule::FiftyFifty),
        ("peer_ref_segment", "via-ref", Rule::Segment),
    ];
    let keys: Vec<(String, Rule)> = cases.iter().map(|(_, k, r)| (k.to_string(), *r)).collect();
    let (set, ygg) = engines(&keys);
    for (group_name, key, rule) in cases {
        let mut group = c.benchmark_group(group_name);
        let mine = set.boolean(key, &ctx, false);
        assert!(mine.error.is_none(), "{group_name}: {mine:?}");
        let theirs = ygg.is_enabled(key, &uctx, &None);
        // Same answer, or the comparison means nothing (a 50/50 split hashes differently in
        // each engine, so only that case may differ).
        if rule != Rule::FiftyFifty {
            assert_eq!(mine.value, theirs, "{group_name}: yggdrasil disagrees");
        }
        group.bench_function("flagstaff", |b| {
            b.iter(|| black_box(set.boolean(black_box(key), black_box(&ctx), false).value))
        });

        let logic = dl
            .compile(&datalogic(rule).to_string())
            .expect("peer compiles");
        let data = ParsedData::from_json(&context_json(key).to_string()).expect("peer data");
        let mut session = dl.session();
        {
            let r = session
                .eval_borrowed(&logic, &data)
                .expect("peer evaluates");
            if rule != Rule::FiftyFifty {
                assert_eq!(
                    r.as_str(),
                    Some(if mine.value { "on" } else { "off" }),
                    "{group_name}: datalogic-rs disagrees"
                );
            }
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
        group.bench_function("yggdrasil", |b| {
            b.iter(|| black_box(ygg.is_enabled(black_box(key), black_box(&uctx), &None)))
        });
        group.finish();
    }

    // 1,000 flags, a quarter of each shape, every one evaluated by key.
    let many: Vec<(String, Rule)> = (0..1000)
        .map(|i| (format!("flag-{i:04}"), rule_of(i)))
        .collect();
    let (big, big_ygg) = engines(&many);
    let mut group = c.benchmark_group("peer_all_1000_flags");
    group.bench_function("flagstaff", |b| {
        b.iter(|| {
            let mut on = 0u32;
            for (k, _) in &many {
                on += u32::from(big.boolean(k, &ctx, false).value);
            }
            black_box(on)
        })
    });
    let logics: Vec<_> = many
        .iter()
        .map(|(_, r)| {
            dl.compile(&datalogic(*r).to_string())
                .expect("peer compiles")
        })
        .collect();
    let datas: Vec<ParsedData> = many
        .iter()
        .map(|(k, _)| ParsedData::from_json(&context_json(k).to_string()).expect("peer data"))
        .collect();
    let mut session = dl.session();
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
    group.bench_function("yggdrasil", |b| {
        b.iter(|| {
            let mut on = 0u32;
            for (k, _) in &many {
                on += u32::from(big_ygg.is_enabled(k, &uctx, &None));
            }
            black_box(on)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
