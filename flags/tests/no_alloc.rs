//! Evaluating boolean and numeric flags allocates nothing on the hot path. A counting global
//! allocator proves it; this file holds a single test so no other test allocates concurrently.

use flagstaff_flags::{Context, FlagSet};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwards the caller's layout unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as for `dealloc`; the new size comes from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn boolean_and_numeric_evaluations_do_not_allocate() {
    let doc = json!({
        "$evaluators": {"staff": {"and": [
            {"ends_with": [{"var": "email"}, "@example.com"]},
            {"in": [{"var": "country"}, ["NL", "BE"]]}
        ]}},
        "flags": {
            "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "disabled": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"},
            "two": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                    "targeting": {"if": [{"and": [{"in": [{"var": "plan"}, ["pro", "enterprise"]]},
                                                  {"ends_with": [{"var": "email"}, "@example.com"]}]}, "on", "off"]}},
            "split": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                      "targeting": {"fractional": [["on", 50], ["off", 50]]}},
            "ref": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                    "targeting": {"if": [{"$ref": "staff"}, "on", null]}},
            "version": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                        "targeting": {"if": [{"sem_ver": [{"var": "app"}, ">=", "2.0.0"]}, "on", "off"]}},
            "shorthand": {"state": "ENABLED", "variants": {"true": true, "false": false}, "defaultVariant": "false",
                          "targeting": {"starts_with": [{"var": "email"}, "jane"]}},
            "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 1000}, "defaultVariant": "low",
                      "targeting": {"if": [{">=": [{"var": "age"}, 18]}, "high", "low"]}},
            "ratio": {"state": "ENABLED", "variants": {"a": 0.25, "b": 0.75}, "defaultVariant": "a",
                      "targeting": {"fractional": [{"var": "email"}, ["a", 1], ["b", 3]]}}
        }
    });
    let set = FlagSet::from_document(&doc).expect("valid document");
    let ctx = Context::new(1_700_000_000)
        .with_targeting_key("user-1")
        .with_attribute("email", "jane@example.com")
        .with_attribute("plan", "pro")
        .with_attribute("country", "NL")
        .with_attribute("app", "2.1.0")
        .with_attribute("age", 30);

    // Warm up once so any lazily initialised state is not counted.
    let _ = set.boolean("static", &ctx, false);

    let mut results = Vec::with_capacity(16);
    let n = allocations_during(|| {
        for key in [
            "static",
            "disabled",
            "two",
            "split",
            "ref",
            "version",
            "shorthand",
        ] {
            let e = set.boolean(key, &ctx, false);
            results.push((e.value, e.reason, e.error.is_none()));
        }
        let i = set.integer("limit", &ctx, 0);
        results.push((i.value == 1000, i.reason, i.error.is_none()));
        let f = set.float("ratio", &ctx, 0.0);
        results.push((f.value > 0.0, f.reason, f.error.is_none()));
    });
    assert_eq!(n, 0, "evaluation allocated {n} times");
    // The evaluations did real work: every one succeeded, and the rules matched as expected.
    assert!(results.iter().all(|r| r.2), "{results:?}");
    let values: Vec<bool> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        values,
        [true, false, true, values[3], true, true, true, true, true],
        "{results:?}"
    );

    // The counter does count: an evaluation that must allocate (an unknown flag's error
    // message) is seen.
    let n = allocations_during(|| {
        let e = set.boolean("no-such-flag", &ctx, false);
        assert!(e.error.is_some());
    });
    assert!(
        n > 0,
        "the counting allocator saw nothing; the zero above proves nothing"
    );
}
