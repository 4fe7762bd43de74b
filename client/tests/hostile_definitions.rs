//! An application process embedding `flagstaff-client` (`examples/evaluate_loop.rs`) evaluates
//! in a loop against three real `flagstaff serve` processes while an admin writes hostile but
//! valid definitions through the API: rules that double strings and lists per context item,
//! a `$ref` chain at its limit, a rule at the depth limit, a definition at the size limit. The
//! application keeps running within its memory budget, the hostile flags answer `ERROR`
//! (`General`) or their normal value, and every other flag keeps the service's values,
//! including the changes written after the hostile ones.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{example_bin, flagstaff_bin, json_lines};
use jepsen_like_tests::cluster::{Cluster, NodeOptions};
use serde_json::{json, Value};

/// The application's peak resident memory may not exceed this (a debug build idles at a few
/// tens of MiB; one unbounded evaluation of the doubling rule would need gigabytes).
const MEMORY_BUDGET_KIB: u64 = 256 * 1024;
const LONG: Duration = Duration::from_secs(60);
const GOOD: usize = 5;
const CHAIN: usize = flagstaff_flags::limits::MAX_REF_CHAIN;

/// An object-valued flag: variant `v{n}` is `{"n": n}`; `pick` is the default variant.
fn object_flag(pick: usize, targeting: Option<Value>) -> Value {
    let mut f = json!({"state": "ENABLED", "defaultVariant": format!("v{pick}"),
        "variants": {"v0": {"n": 0}, "v1": {"n": 1}, "v2": {"n": 2}, "v3": {"n": 3}}});
    if let Some(t) = targeting {
        f["targeting"] = t;
    }
    f
}

/// Targeting that is `v1` when `test` holds, else `v2`.
fn when(test: Value) -> Value {
    json!({"if": [test, "v1", "v2"]})
}

/// The hostile flags: each reads the context (so no write-time proof can refuse it) and, over
/// the application's 1,000 context items, would build gigabytes or loop for minutes unbounded.
fn hostile() -> Vec<(&'static str, Value)> {
    let items = json!({"var": "items"});
    let acc = json!({"var": "accumulator"});
    vec![
        (
            "doubling-string",
            when(json!({"==": [{"reduce": [items, {"cat": [acc, acc]}, "ab"]}, "never"]})),
        ),
        (
            "doubling-list",
            when(json!({"==": [{"reduce": [items, {"merge": [acc, acc]}, [1]]}, 0]})),
        ),
        (
            "nested-lists",
            when(json!({"==": [{"reduce": [items, [acc, acc], 0]}, 0]})),
        ),
        (
            "quadratic-merge",
            when(
                json!({"==": [{"reduce": [items, {"merge": [acc, [{"var": "current"}]]}, []]}, 0]}),
            ),
        ),
    ]
}

struct App {
    child: Child,
    lines: mpsc::Receiver<Value>,
    last: Option<Value>,
    peak_kib: u64,
}

impl App {
    fn start(endpoints: &str, key: &str, flags: &[String]) -> App {
        let mut child = Command::new(example_bin("evaluate_loop"))
            .env("FLAGSTAFF_ENDPOINTS", endpoints)
            .env("FLAGSTAFF_NAMESPACE", "app")
            .env("FLAGSTAFF_SDK_KEY", key)
            .env("FLAGSTAFF_FLAGS", flags.join(","))
            .env("FLAGSTAFF_RUN_SECS", "300")
            .env("FLAGSTAFF_CONTEXT_ITEMS", "1000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the application");
        let stdout = child.stdout.take().unwrap();
        let lines = json_lines(stdout);
        App {
            child,
            lines,
            last: None,
            peak_kib: 0,
        }
    }

    /// Reads rounds until `done` holds for one (panics after `LONG`, or if the process ends).
    fn wait_for(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the application exited ({status}) while waiting for {what}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; last round: {}",
                self.last.as_ref().map(brief).unwrap_or_default()
            );
            if let Ok(round) = self.lines.recv_timeout(left.min(Duration::from_secs(1))) {
                let peak = round["peak_kib"].as_u64().unwrap_or(0);
                self.peak_kib = self.peak_kib.max(peak);
                assert!(
                    peak <= MEMORY_BUDGET_KIB,
                    "the application's peak memory {peak} KiB is over its budget: {}",
                    brief(&round)
                );
                let ok = done(&round);
                self.last = Some(round.clone());
                if ok {
                    return round;
                }
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Closing its standard input stops the loop; kill it by its id if it does not stop.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A round without the padded value of flag `big`, for messages.
fn brief(round: &Value) -> String {
    let mut r = round.clone();
    if let Some(pad) = r.pointer_mut("/flags/big/value/pad") {
        *pad = json!("…");
    }
    r.to_string()
}

fn good_n(round: &Value, i: usize) -> Option<u64> {
    round["flags"][format!("good-{i}")]["value"]["n"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_application_keeps_its_values_and_its_memory_while_hostile_rules_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(&flagstaff_bin(), dir.path(), 3, 0, NodeOptions::default())
        .await
        .unwrap_or_else(|e| panic!("starting 3 flagstaff processes: {e:#}"));
    let admin = |method: reqwest::Method, path: String, body: Value| {
        let c = &c;
        async move {
            let (s, b) = c
                .call(1, method, &path, Some(body))
                .await
                .unwrap_or_else(|e| panic!("{path}: {e:#}"));
            assert_eq!(s, 200, "{path}: {b}");
            b
        }
    };
    let put = |path: String, body: Value| admin(reqwest::Method::PUT, path, body);
    put("/v1/namespaces/app".into(), json!({})).await;
    for i in 0..GOOD {
        let targeting = when(json!({"==": [{"var": "targetingKey"}, "user-1"]}));
        put(
            format!("/v1/namespaces/app/flags/good-{i}"),
            object_flag(0, Some(targeting)),
        )
        .await;
    }
    let key = admin(
        reqwest::Method::POST,
        "/v1/namespaces/app/sdk-keys".into(),
        json!({"name": "app"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();

    let mut flags: Vec<String> = (0..GOOD).map(|i| format!("good-{i}")).collect();
    flags.extend(hostile().iter().map(|(k, _)| k.to_string()));
    flags.extend(["chained", "deep", "big"].map(String::from));
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.api.clone()).collect();
    let mut app = App::start(&endpoints.join(","), &key, &flags);
    app.wait_for("the good flags' values", |r| {
        (0..GOOD).all(|i| good_n(r, i) == Some(1))
    });

    // Hostile definitions, each accepted by the service.
    for (name, targeting) in hostile() {
        put(
            format!("/v1/namespaces/app/flags/{name}"),
            object_flag(3, Some(targeting)),
        )
        .await;
    }
    // At the limits: a chain of CHAIN segments, a rule nested to the depth limit, a definition
    // near the size limit.
    put(
        "/v1/namespaces/app/segments/s0".into(),
        json!({"in": ["item-999", {"var": "items"}]}),
    )
    .await;
    for i in 1..CHAIN {
        let rule =
            json!({"and": [{"$ref": format!("s{}", i - 1)}, {"in": ["x", {"var": "name"}]}]});
        put(format!("/v1/namespaces/app/segments/s{i}"), rule).await;
    }
    let top = format!("s{}", CHAIN - 1);
    put(
        "/v1/namespaces/app/flags/chained".into(),
        object_flag(0, Some(when(json!({"$ref": top})))),
    )
    .await;
    // `{"if": [{"!": {"!": … {"var": …}}}, …]}`: the `var` sits just inside the depth limit. (The
    // unary form without an array: with one, JSON text nests twice per level, and request
    // bodies are parsed at most 128 levels deep.)
    let negations = flagstaff_flags::limits::MAX_RULE_DEPTH - 2;
    let mut nested = json!({"var": "targetingKey"});
    for _ in 0..negations {
        nested = json!({"!": nested});
    }
    put(
        "/v1/namespaces/app/flags/deep".into(),
        object_flag(0, Some(when(nested))),
    )
    .await;
    let mut big = object_flag(2, None);
    big["variants"]["v2"] = json!({"n": 2, "pad": "x".repeat(200 * 1024)});
    put("/v1/namespaces/app/flags/big".into(), big).await;

    // Then ordinary changes to the good flags: the application must see them.
    for i in 0..GOOD {
        let targeting = when(json!({"==": [{"var": "targetingKey"}, "someone-else"]}));
        put(
            format!("/v1/namespaces/app/flags/good-{i}"),
            object_flag(0, Some(targeting)),
        )
        .await;
    }
    let round = app.wait_for("the good flags' new values and every hostile flag", |r| {
        (0..GOOD).all(|i| good_n(r, i) == Some(2))
            && r["flags"]["big"]["value"]["n"] == 2
            && hostile()
                .iter()
                .all(|(k, _)| r["flags"][*k]["reason"] != Value::Null)
    });
    for (name, _) in hostile() {
        let f = &round["flags"][name];
        assert_eq!(f["reason"], "ERROR", "{name}: {f}");
        assert_eq!(f["error"], "General", "{name}: {f}");
        assert_eq!(f["value"], Value::Null, "{name}: the caller's default, {f}");
    }
    // The chain's leaf finds "item-999" in the items and every link "x" in the name: v1. An
    // even number of `!` over a non-empty targeting key is true: v1.
    let shown = brief(&round);
    assert_eq!(round["flags"]["chained"]["value"]["n"], 1, "{shown}");
    assert_eq!(negations % 2, 0);
    assert_eq!(round["flags"]["deep"]["value"]["n"], 1, "{shown}");

    // And it keeps evaluating: many more rounds, all within budget, all with the same values.
    let first = round["round"].as_u64().unwrap();
    let later = app.wait_for("fifty more rounds", |r| {
        r["round"].as_u64().unwrap() >= first + 50
    });
    assert!(
        (0..GOOD).all(|i| good_n(&later, i) == Some(2)),
        "{}",
        brief(&later)
    );
    eprintln!(
        "application peak memory {} KiB (budget {MEMORY_BUDGET_KIB} KiB), {} rounds",
        app.peak_kib, later["round"]
    );
    drop(app);
    drop(c);
}
