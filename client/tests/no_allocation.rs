//! Evaluating boolean and numeric flags through the SDK allocates nothing, as the evaluator
//! itself does not (an unknown flag's error message is the evaluator's one allocation): a counting global allocator proves it for the calling thread (the
//! client's own background thread may allocate meanwhile; it is not counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use flagstaff_client::{context, Client};
use serde_json::json;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` and without a destructor: reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwards the caller's layout unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `dealloc`; the new size comes from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn boolean_and_numeric_evaluations_through_the_client_do_not_allocate() {
    let doc = json!({"flags": {
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "rule": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                 "targeting": {"if": [{"and": [{"in": [{"var": "plan"}, ["pro", "team"]]},
                                               {"ends_with": [{"var": "email"}, "@example.com"]}]}, "on", "off"]}},
        "limit": {"state": "ENABLED", "variants": {"a": 12, "b": 50}, "defaultVariant": "a"},
        "ratio": {"state": "ENABLED", "variants": {"a": 0.25}, "defaultVariant": "a"}
    }});
    let client = Client::builder("checkout", "key")
        .bootstrap_document(doc)
        .build()
        .unwrap();
    let ctx = context()
        .with_targeting_key("user-1")
        .with_attribute("plan", "pro")
        .with_attribute("email", "a@example.com");
    // The first call on this thread takes its reference to the data set (no allocation
    // either, but thread-local set-up may allocate once).
    assert!(client.bool("static", &ctx, false));
    let n = allocations_during(|| {
        for _ in 0..1000 {
            assert!(client.bool("static", &ctx, false));
            assert!(client.bool("rule", &ctx, false));
            assert_eq!(client.i64("limit", &ctx, 0), 12);
            assert_eq!(client.f64("ratio", &ctx, 0.0), 0.25);
        }
    });
    assert_eq!(n, 0, "allocations in 4,000 evaluations");
    // The counter does count this thread's allocations (the test can fail).
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);
}
