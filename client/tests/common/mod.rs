#![allow(dead_code)]

pub mod cluster;
pub mod fake_node;
pub mod freeze_proxy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// The JSON lines a child process prints, as they come (a reader thread; other lines are
/// skipped). The channel closes when the process closes its output.
pub fn json_lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<Value> {
    use std::io::{BufRead, BufReader};
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    lines
}

/// The `flagstaff` binary: `$FLAGSTAFF_BIN`, else next to this test executable
/// (`target/<profile>/deps/…` → `target/<profile>/flagstaff`), else `$CARGO_TARGET_DIR/debug`,
/// else built now (`built`).
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
    if let Some(profile_dir) = profile_dir() {
        candidates.push(profile_dir.join("flagstaff"));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join("flagstaff"));
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => built("bin", "flagstaff"),
    }
}

/// An example of this package, next to this test executable (`target/<profile>/deps/…` →
/// `target/<profile>/examples/NAME`), else built now (`built`).
pub fn example_bin(name: &str) -> PathBuf {
    match profile_dir().map(|profile| profile.join("examples").join(name)) {
        Some(path) if path.is_file() => path,
        _ => built("example", name),
    }
}

/// `target/<profile>`, the directory of this test executable's `deps/`.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent().and_then(Path::parent).map(Path::to_path_buf)
}

/// The executable of target `name` of kind `kind` ("bin", "example") in the workspace, after
/// `cargo build --workspace --bins --examples --locked`, run once per test process.
///
/// Cargo builds for an integration test only its own package's binaries. `cargo test
/// --workspace` and `cargo nextest run --workspace` build `flagstaff` anyway (flagstaff-cluster
/// has integration tests of its own) and every example, but `cargo test -p flagstaff-client`
/// does not, nor does a setup that puts test executables away from the binaries (`build-dir`).
/// So a missing one is built here: with the cargo that compiled this test (`env!("CARGO")`),
/// in the workspace root, with this process's environment (so the same `CARGO_TARGET_DIR` and
/// configuration), for the profile of this test executable. Workspace-wide bins and examples
/// resolve features as the workspace's test builds do, so RocksDB and the other dependencies
/// are reused, not compiled again. Cargo's own lock orders concurrent test processes; the ones
/// after the first find everything fresh. Where cargo put each executable is read from its
/// JSON messages, not guessed.
fn built(kind: &str, name: &str) -> PathBuf {
    type Built = Result<HashMap<(String, String), PathBuf>, String>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let built = BUILT.get_or_init(build_bins_and_examples);
    match built {
        Ok(artifacts) => match artifacts.get(&(kind.to_string(), name.to_string())) {
            Some(path) if path.is_file() => path.clone(),
            _ => panic!(
                "cargo built no {kind} `{name}` (it built {:?})",
                artifacts.keys().collect::<Vec<_>>()
            ),
        },
        Err(e) => panic!("{e}"),
    }
}

fn build_bins_and_examples() -> Result<HashMap<(String, String), PathBuf>, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("client/ is in the workspace root");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace).args([
        "build",
        "--workspace",
        "--bins",
        "--examples",
        "--locked",
        "--message-format=json-render-diagnostics",
    ]);
    // `debug` is the dev (and test) profile's directory, `release` the release (and bench) one's.
    match profile_dir()
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        None | Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    eprintln!("a binary or example these tests run is missing; building them: {cmd:?}");
    // Cargo's progress and errors go to this test's stderr as they come; its messages are read.
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}); its errors are above",
            out.status
        ));
    }
    let mut artifacts = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some("compiler-artifact"), Some(exe), Some(target)) = (
            msg["reason"].as_str(),
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
        ) else {
            continue;
        };
        for kind in msg["target"]["kind"].as_array().into_iter().flatten() {
            if let Some(kind) = kind.as_str() {
                artifacts.insert((kind.to_string(), target.to_string()), PathBuf::from(exe));
            }
        }
    }
    Ok(artifacts)
}
