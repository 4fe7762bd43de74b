//! Memory a client holds for 1,000 typical flags, counted by a global allocator that tracks
//! live and peak heap bytes. Run: `cargo bench -p flagstaff-client --bench memory`.
//!
//! The flags come from an LKG file, the same structure a client builds from a node's snapshot:
//! the compiled evaluator, plus each definition as compact JSON text (for applying changes and
//! writing the LKG file; as `serde_json` values they would take about 20 times their text).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use flagstaff_client::lkg::{self, LkgContents};
use flagstaff_client::{context, Client};
use flagstaff_flags::FlagSet;
use serde_json::{json, Value};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Live bytes `f` leaves allocated (what it returns), and the peak above the start while it ran.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let before = live();
    PEAK.store(before, Ordering::Relaxed);
    let value = f();
    let after = live();
    (
        value,
        after.saturating_sub(before),
        PEAK.load(Ordering::Relaxed).saturating_sub(before),
    )
}

/// 1,000 flags of the kinds applications keep: kill switches, targeted releases, percentage
/// rollouts, string and object configuration, and some segments they share.
fn typical_flags(n: usize) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let mut flags = BTreeMap::new();
    for i in 0..n {
        let def = match i % 10 {
            0..=3 => json!({
                "state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": if i % 2 == 0 { "on" } else { "off" },
                "metadata": {"owner": "team-checkout"}
            }),
            4 | 5 => json!({
                "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"or": [
                    {"$ref": "staff"},
                    {"and": [{"in": [{"var": "plan"}, ["pro", "team"]]}, {"==": [{"var": "country"}, "DE"]}]}
                ]}, "on", "off"]}
            }),
            6 => json!({
                "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"fractional": [["on", 10], ["off", 90]]}
            }),
            7 | 8 => json!({
                "state": "ENABLED",
                "variants": {"control": "Buy now", "a": "Add to cart", "b": "Get it today"},
                "defaultVariant": "control",
                "targeting": {"if": [{"sem_ver": [{"var": "app_version"}, ">=", "2.4.0"]},
                    {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}, ["a", 50], ["b", 50]]},
                    "control"]}
            }),
            _ => json!({
                "state": "ENABLED",
                "variants": {
                    "default": {"max_items": 50, "timeout_ms": 3000, "regions": ["eu-west-1", "us-east-1"]},
                    "strict": {"max_items": 10, "timeout_ms": 1000, "regions": ["eu-west-1"]}
                },
                "defaultVariant": "default",
                "targeting": {"if": [{"$ref": "beta-testers"}, "strict", "default"]}
            }),
        };
        flags.insert(format!("team-{}-feature-{i:04}", i % 17), def);
    }
    let segments = BTreeMap::from([
        (
            "staff".to_string(),
            json!({"ends_with": [{"var": "email"}, "@example.com"]}),
        ),
        (
            "beta-testers".to_string(),
            json!({"in": [{"var": "targetingKey"}, ["user-1", "user-2", "user-3"]]}),
        ),
    ]);
    (flags, segments)
}

fn kib(b: usize) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn main() {
    const N: usize = 1000;
    // Criterion-style arguments (`--bench`) are ignored.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let (flags, segments) = typical_flags(N);
    let doc = json!({"flags": flags, "$evaluators": segments});
    let json_bytes = doc.to_string().len();

    let empty_path = dir.path().join("empty.lkg");
    let full_path = dir.path().join("full.lkg");
    let write = |path: &std::path::Path, flags: BTreeMap<String, Value>, segments| {
        let contents = LkgContents {
            namespace: "checkout".into(),
            cluster_id: "c1".into(),
            key_fingerprint: lkg::key_fingerprint("key"),
            revision: 7,
            fetched_at_unix_ms: 1,
            data_as_of_unix_ms: Some(1),
            flags,
            segments,
        };
        lkg::write_atomic(path, &lkg::encode(&contents).expect("encode LKG")).expect("write LKG");
    };
    write(&empty_path, BTreeMap::new(), BTreeMap::new());
    write(&full_path, flags.clone(), segments.clone());

    let build = |path: &std::path::Path| {
        Client::builder("checkout", "key")
            .lkg_file(path)
            .build()
            .expect("client")
    };
    // Warm up lazily initialised statics (TLS, tracing, runtime internals) outside the counts.
    drop(build(&empty_path));

    let (empty, empty_live, _) = measure(|| build(&empty_path));
    let (full, full_live, full_peak) = measure(|| build(&full_path));
    let ctx = context().with_targeting_key("user-7");
    let ((), eval_live, _) = measure(|| {
        for i in 0..N {
            let key = format!("team-{}-feature-{i:04}", i % 17);
            std::hint::black_box(full.bool(&key, &ctx, false));
        }
    });
    assert_eq!(full.revision(), Some(7));
    let (compiled, compiled_live, _) = measure(|| FlagSet::from_document(&doc).expect("valid"));
    let (raw, raw_live, _) = measure(|| (flags.clone(), segments.clone()));
    let per_flag = full_live.saturating_sub(empty_live) / N;

    let rows = [
        ("flagd JSON text of the flags".to_string(), kib(json_bytes)),
        ("client with no flags".to_string(), kib(empty_live)),
        (
            format!("client holding {N} flags"),
            format!(
                "{} ({per_flag} B per flag above an empty client)",
                kib(full_live)
            ),
        ),
        (
            "  of which the compiled evaluator (FlagSet)".to_string(),
            kib(compiled_live),
        ),
        (
            "  of which the definitions as text, and the rest".to_string(),
            kib(full_live.saturating_sub(empty_live + compiled_live)),
        ),
        (
            "(the same definitions as serde_json values)".to_string(),
            kib(raw_live),
        ),
        ("peak while loading them".to_string(), kib(full_peak)),
        (
            format!("retained after {N} evaluations"),
            format!("{eval_live} B"),
        ),
    ];
    println!("memory for {N} typical flags (heap bytes, counting allocator)");
    for (what, value) in rows {
        println!("  {what:<50} {value}");
    }
    drop((empty, full, compiled, raw));
}
