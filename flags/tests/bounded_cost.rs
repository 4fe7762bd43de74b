//! Every accepted rule evaluates within the budget of `flagstaff_flags::limits`: hostile shapes
//! (string and list doubling, nesting, wide loops, long `$ref` chains) end as `ERROR`/`GENERAL`
//! within bounded memory, and the other flags of the set keep their values. A counting
//! allocator measures the peak of live heap bytes during each evaluation, per thread, so tests
//! running side by side in one process (`cargo test`) do not add to each other's peaks.

use flagstaff_flags::limits::{EVAL_MAX_BYTES, MAX_REF_CHAIN};
use flagstaff_flags::{
    check_segment_graph, validate_document, Context, ErrorCode, FlagSet, Reason, RefFault,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

struct Counting;

thread_local! {
    // Bytes this thread allocated minus what it freed (memory freed by another thread than
    // the one that allocated it makes this drift, which is why it is signed), and its peak.
    // Const-initialised without a destructor: using them never allocates.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Adds `delta` bytes to this thread's live count and raises its peak.
fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: forwards the caller's layout unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; the new size comes from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak heap growth allowed for one evaluation: the byte budget, plus what one operation may
/// copy before it is charged (a write of an already charged value), plus slack for the
/// evaluator's own bookkeeping.
const PEAK_BOUND: usize = 4 * EVAL_MAX_BYTES as usize + (1 << 20);

/// A generous guard against hangs only (the bound itself is the step budget, not time).
const HANG_GUARD: Duration = Duration::from_secs(10);

/// Runs `f` on this thread, returning its result and the peak of this thread's heap bytes
/// above what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, peak.saturating_sub(base).max(0) as usize)
}

fn flag(targeting: Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": targeting})
}

fn items(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!(i)).collect())
}

/// A context with a list of `n` items, as an application could send.
fn context(n: usize) -> Context {
    Context::new(1_700_000_000)
        .with_targeting_key("user-1")
        .with_attribute("items", items(n))
}

/// Evaluates `f` in a set beside a plain flag and checks the outcome and the bounds.
fn assert_bounded(targeting: Value, ctx: &Context) -> Option<String> {
    let doc = json!({"flags": {"hostile": flag(targeting), "plain": {"state": "ENABLED", "variants": {"a": "served", "b": "other"}, "defaultVariant": "a"}}});
    let set = match FlagSet::from_document(&doc) {
        Ok(set) => set,
        Err(faults) => return Some(format!("refused: {faults:?}")),
    };
    let started = Instant::now();
    let (e, peak) = peak_during(|| {
        let e = set.boolean("hostile", ctx, true);
        (e.value, e.reason, e.error.map(|e| (e.code, e.message)))
    });
    assert!(
        started.elapsed() < HANG_GUARD,
        "evaluation took {:?}",
        started.elapsed()
    );
    assert!(peak <= PEAK_BOUND, "evaluation peaked at {peak} bytes");
    let plain = set.string("plain", ctx, "dflt");
    assert_eq!((plain.value, plain.reason), ("served", Reason::Static));
    e.2.map(|(code, message)| {
        assert!(e.0, "the caller's default on error");
        assert_eq!(e.1, Reason::Error);
        assert_eq!(code, ErrorCode::General);
        message
    })
}

#[test]
fn string_doubling_is_stopped() {
    // acc = acc + acc for every item: 2^64 bytes if nothing stopped it.
    let rule = json!({"if": [{"reduce": [{"var": "items"}, {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "x"]}, "on", "off"]});
    let why = assert_bounded(rule, &context(64)).expect("stopped");
    assert!(why.contains("bytes of values"), "{why}");
}

#[test]
fn list_doubling_and_nesting_are_stopped() {
    // [acc, acc]: shared halves, so the logical size doubles per item while little is built.
    let rule = json!({"if": [{"in": [1, {"reduce": [{"var": "items"}, [{"var": "accumulator"}, {"var": "accumulator"}], [1]]}]}, "on", "off"]});
    let why = assert_bounded(rule, &context(64)).expect("stopped");
    assert!(why.contains("nested deeper"), "{why}");
    // merge(acc, acc) flattens: the list itself doubles.
    let rule = json!({"if": [{"reduce": [{"var": "items"}, {"merge": [{"var": "accumulator"}, {"var": "accumulator"}]}, [1]]}, "on", "off"]});
    let why = assert_bounded(rule, &context(64)).expect("stopped");
    assert!(why.contains("bytes of values"), "{why}");
    // Writing a doubled list as text walks every shared half.
    let rule = json!({"if": [{"cat": [{"reduce": [{"var": "items"}, [{"var": "accumulator"}, {"var": "accumulator"}], [1]]}]}, "on", "off"]});
    assert!(assert_bounded(rule, &context(30)).is_some());
}

#[test]
fn nested_loops_are_stopped_by_steps() {
    // 10,000 items, each searched for in a 5,000-number list: 50 million comparisons.
    let rule = json!({"if": [{"some": [{"var": "items"}, {"in": [{"var": ""}, items(5_000)]}]}, "on", "off"]});
    let why = assert_bounded(rule, &context(10_000)).expect("stopped");
    assert!(why.contains("steps"), "{why}");
}

#[test]
fn ordinary_rules_over_large_contexts_evaluate_normally() {
    // A rule over a thousand-item list, and a wide `in` list: well inside the budget.
    let rule =
        json!({"if": [{"some": [{"var": "items"}, {"==": [{"var": ""}, 999]}]}, "on", "off"]});
    assert_eq!(assert_bounded(rule, &context(1_000)), None);
    let list: Vec<Value> = (0..5_000).map(|i| json!(format!("user-{i}"))).collect();
    let rule = json!({"if": [{"in": [{"var": "targetingKey"}, list]}, "on", "off"]});
    assert_eq!(assert_bounded(rule, &context(0)), None);
}

#[test]
fn a_constant_rule_that_always_exceeds_is_refused_with_its_path() {
    let rule = json!({"if": [{"reduce": [items(64), {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "x"]}, "on", "off"]});
    let faults = validate_document(&json!({"flags": {"f": flag(rule)}})).expect_err("refused");
    assert!(
        faults
            .iter()
            .any(|f| f.path == "flags.f.targeting.if[0].reduce"
                && f.message.contains("always exceeds the evaluation budget")),
        "{faults:?}"
    );
    // The same shape over the context is accepted: it depends on what the context holds.
    let rule = json!({"if": [{"reduce": [{"var": "items"}, {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "x"]}, "on", "off"]});
    assert!(validate_document(&json!({"flags": {"f": flag(rule)}})).is_ok());
}

/// A chain of `n` segments `s0 → s1 → … → s(n-1)`, named so that the chain runs in ascending
/// or descending name order.
fn chain(n: usize, ascending: bool) -> serde_json::Map<String, Value> {
    let name = |i: usize| {
        if ascending {
            format!("s{i:05}")
        } else {
            format!("s{:05}", n - i)
        }
    };
    (0..n)
        .map(|i| {
            let rule = if i + 1 < n {
                json!({"and": [true, {"$ref": name(i + 1)}]})
            } else {
                json!({"==": [{"var": "targetingKey"}, "user-1"]})
            };
            (name(i), rule)
        })
        .collect()
}

#[test]
fn chain_depth_does_not_depend_on_names() {
    for ascending in [true, false] {
        for (n, ok) in [
            (MAX_REF_CHAIN, true),
            (MAX_REF_CHAIN + 1, false),
            (2_500, false),
        ] {
            let segs = chain(n, ascending);
            let head = segs
                .keys()
                .find(|k| {
                    segs.values()
                        .all(|r| !r.to_string().contains(&format!("\"{k}\"")))
                })
                .cloned()
                .expect("a head");
            let doc = json!({"$evaluators": segs, "flags": {"f": flag(json!({"if": [{"$ref": head}, "on", "off"]}))}});
            assert_eq!(
                validate_document(&doc).is_ok(),
                ok,
                "n={n} ascending={ascending}"
            );
            let (set, faults) = FlagSet::from_document_lossy(&doc);
            assert_eq!(
                faults.is_empty(),
                ok,
                "n={n} ascending={ascending}: {faults:?}"
            );
            let ctx = context(0);
            let e = set.boolean("f", &ctx, false);
            if ok {
                assert_eq!((e.value, e.reason), (true, Reason::TargetingMatch));
            } else {
                assert_eq!(e.error.map(|e| e.code), Some(ErrorCode::ParseError));
            }
            let graph: Vec<(String, Vec<String>)> = doc["$evaluators"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        flagstaff_flags::rule_refs(r).into_iter().collect(),
                    )
                })
                .collect();
            let verdict = check_segment_graph(
                graph
                    .iter()
                    .map(|(k, r)| (k.as_str(), r.iter().map(String::as_str))),
                MAX_REF_CHAIN,
            );
            assert_eq!(
                verdict.is_ok(),
                ok,
                "n={n} ascending={ascending}: {verdict:?}"
            );
            if !ok {
                assert!(
                    matches!(verdict, Err(RefFault::TooDeep { .. })),
                    "{verdict:?}"
                );
            }
        }
    }
}

#[test]
fn segment_graph_faults() {
    let g = |pairs: &[(&'static str, &[&'static str])]| {
        check_segment_graph(
            pairs.iter().map(|(k, r)| (*k, r.iter().copied())),
            MAX_REF_CHAIN,
        )
    };
    assert_eq!(g(&[("a", &["b"]), ("b", &[])]), Ok(()));
    assert_eq!(
        g(&[("a", &["b"]), ("b", &["c", "a"]), ("c", &[])]),
        Err(RefFault::Cycle(vec!["a".into(), "b".into(), "a".into()]))
    );
    assert_eq!(
        g(&[("z", &["y"]), ("y", &["z"])]),
        Err(RefFault::Cycle(vec!["y".into(), "z".into(), "y".into()]))
    );
    assert_eq!(
        g(&[("a", &["nope"])]),
        Err(RefFault::Missing {
            segment: "a".into(),
            missing: "nope".into()
        })
    );
}

#[path = "support/large_namespace.rs"]
mod large;
use large::large_namespace;

#[test]
fn a_large_namespace_builds_and_evaluates() {
    let doc = large_namespace(10_000, 10_000);
    let (set, faults) = FlagSet::from_document_lossy(&doc);
    assert!(faults.is_empty(), "{:?}", &faults[..faults.len().min(3)]);
    assert_eq!(set.len(), 10_000);
    let ctx = Context::new(0)
        .with_attribute("email", "a@team2.example")
        .with_attribute("country", "NL");
    // seg3 = seg0 and seg2; seg2 = seg1 or seg0; seg1 = seg0 and in; seg0 = team0.
    let e = set.boolean("flag2", &ctx, true);
    assert_eq!((e.value, e.reason), (false, Reason::TargetingMatch));
    let ctx = ctx.with_attribute("email", "a@team0.example");
    assert!(set.boolean("flag3", &ctx, false).value);
}

/// Rules built from the expensive operators, over the context's list and each other.
fn expensive_rule() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({"var": "items"})),
        Just(json!({"var": "accumulator"})),
        Just(json!({"var": "current"})),
        Just(json!({"var": ""})),
        Just(json!("ab")),
        Just(json!([1, 2, 3])),
        any::<i8>().prop_map(|n| json!(n)),
    ];
    leaf.prop_recursive(6, 64, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"map": [a, b]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"filter": [a, b]})),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| json!({"reduce": [a, b, c]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"merge": [a, b, a]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"cat": [a, b, a]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!([a, b])),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"some": [a, b]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"in": [a, b]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"==": [a, b]})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"substr": [a, b]})),
            inner
                .clone()
                .prop_map(|a| json!({"!": [{"!": [{"!": [a]}]}]})),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_accepted_rule_evaluates_within_bounds(rule in expensive_rule(), n in 0usize..200) {
        let targeting = json!({"if": [rule, "on", "off"]});
        if let Some(why) = assert_bounded(targeting, &context(n)) {
            // Refused at compile time, or stopped by the budget: both name what they exceeded.
            prop_assert!(!why.is_empty());
        }
    }
}
