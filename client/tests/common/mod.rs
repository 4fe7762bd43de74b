#![allow(dead_code)]

pub mod cluster;
pub mod fake_node;
pub mod freeze_proxy;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstaff_client::{context, Client, Event, Reason, Source};
use serde_json::{json, Value};

/// Polls `cond` until it holds or `within` passes (then panics with `what`).
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn bool_flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

/// Records every event a client emits.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn listener(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e| log.lock().unwrap().push(e.clone())
    }

    pub fn any(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }

    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// A local address nothing listens on.
pub fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Evaluates flag `flag` in a loop on its own thread (every 200 µs) and counts results that
/// are not real data (reason `ERROR` or the call-site default) or that go back to a lower
/// revision than one already seen.
pub struct Evaluator {
    stop: Arc<AtomicBool>,
    bad: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    first_bad: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Evaluator {
    pub fn start(client: Client, flag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let first_bad = Arc::new(Mutex::new(None));
        let (s, b, t, fb) = (stop.clone(), bad.clone(), total.clone(), first_bad.clone());
        let flag = flag.to_string();
        let thread = std::thread::spawn(move || {
            let ctx = context().with_targeting_key("user-1");
            let mut highest = None;
            while !s.load(Ordering::Relaxed) {
                let d = client.bool_details(&flag, &ctx, false);
                t.fetch_add(1, Ordering::Relaxed);
                let regressed = d.revision < highest;
                if d.reason == Reason::Error || d.source == Source::Default || regressed {
                    b.fetch_add(1, Ordering::Relaxed);
                    fb.lock()
                        .unwrap()
                        .get_or_insert(format!("{d:?} (highest revision seen {highest:?})"));
                }
                highest = highest.max(d.revision);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Self {
            stop,
            bad,
            total,
            first_bad,
            thread: Some(thread),
        }
    }

    /// Stops the thread: (evaluations, bad ones, the first bad one).
    pub fn finish(mut self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let first = self.first_bad.lock().unwrap().clone();
        (
            self.total.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed),
            first,
        )
    }
}

/// The `flagstaff` binary: `$FLAGSTAFF_BIN`, else next to this test executable
/// (`target/<profile>/deps/…` → `target/<profile>/flagstaff`), else `$CARGO_TARGET_DIR/debug`.
pub fn flagstaff_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLAGSTAFF_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "FLAGSTAFF_BIN={} is not a file; build it with `cargo build -p flagstaff-cluster`",
            p.display()
        );
        return p;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("flagstaff"));
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join("flagstaff"));
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "the flagstaff binary was not found (looked at {candidates:?}); run \
             `cargo build --workspace --all-targets` first, or set FLAGSTAFF_BIN"
        ),
    }
}

/// An example of this package (`cargo build --workspace --all-targets` builds them), next to
/// this test executable (`target/<profile>/deps/…` → `target/<profile>/examples/NAME`).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join(name))
        .expect("the test executable is in target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} was not found; run `cargo build --workspace --all-targets` first",
        path.display()
    );
    path
}
