//! The documented write and request limits, on real nodes: a flagd document exactly at the
//! default limits (flags and segments per namespace, definition bytes, `$ref` chain, rule depth)
//! imports and evaluates, and one step over each is refused with 400 naming the path; the
//! namespace byte total, the OFREP context size and the watch streams per key, with lowered
//! node options, are enforced at exactly their value.

mod common;

use std::time::Duration;

use common::{bool_flag, TestCluster};
use flagstaff_node::NodeConfig;
use flagstaff_raft_store::StateLimits;
use serde_json::{json, Map, Value};

fn defaults(_: &mut NodeConfig) {}

const CHAIN: usize = flagstaff_flags::limits::MAX_REF_CHAIN;
const DEPTH: usize = flagstaff_flags::limits::MAX_RULE_DEPTH;

/// `{"!": {"!": … true …}}` with `n` negations: its innermost value sits `n` levels deep. (The
/// unary form: `{"!": [x]}` nests the JSON text twice per level, and request bodies are parsed
/// at most 128 levels deep.)
fn negations(n: usize) -> Value {
    (0..n).fold(json!(true), |inner, _| json!({"!": inner}))
}

/// A flag whose stored JSON text is exactly `bytes` long (a padded string variant).
fn flag_of_size(bytes: usize) -> Value {
    let with = |pad: usize| json!({"state": "ENABLED", "variants": {"on": "x".repeat(pad), "off": ""}, "defaultVariant": "on"});
    let base = serde_json::to_string(&with(0)).unwrap().len();
    let flag = with(bytes - base);
    assert_eq!(serde_json::to_string(&flag).unwrap().len(), bytes);
    flag
}

/// Asserts a 400 whose faults name `path`.
fn assert_refused(status: u16, body: &Value, path: &str) {
    assert_eq!(status, 400, "{body}");
    let faults = body["error"]["faults"]
        .as_array()
        .unwrap_or_else(|| panic!("no faults: {body}"));
    assert!(
        faults
            .iter()
            .any(|f| f["path"].as_str().is_some_and(|p| p.starts_with(path))),
        "no fault at {path}: {body}"
    );
}

async fn sdk_key(c: &TestCluster, via: u64, ns: &str) -> String {
    let (s, b) = c
        .post(
            via,
            &format!("/v1/namespaces/{ns}/sdk-keys"),
            json!({"name": "app"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b["secret"].as_str().unwrap().to_string()
}

async fn evaluate(c: &TestCluster, via: u64, key: &str, flag: &str, body: String) -> (u16, Value) {
    let r = c
        .http
        .post(format!(
            "{}/ofrep/v1/evaluate/flags/{flag}",
            c.node(via).api
        ))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_at_the_default_limits_imports_and_evaluates_and_one_more_is_refused() {
    let limits = StateLimits::default();
    let c = TestCluster::start(1, defaults).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "full").await;

    // Segments: chains of exactly CHAIN links; the first chain's leaf is a rule at the depth limit.
    let mut segments = Map::new();
    let chains = limits.max_segments / CHAIN;
    assert_eq!(chains * CHAIN, limits.max_segments);
    for chain in 0..chains {
        for link in 0..CHAIN {
            let rule = match (chain, link) {
                (0, 0) => negations(DEPTH),
                (_, 0) => json!({"==": [{"var": "tier"}, chain]}),
                _ => json!({"and": [true, {"$ref": format!("c{chain}-{}", link - 1)}]}),
            };
            segments.insert(format!("c{chain}-{link}"), rule);
        }
    }
    let mut flags = Map::new();
    for i in 0..limits.max_flags - 2 {
        flags.insert(
            format!("f{i}"),
            bool_flag(if i % 2 == 0 { "on" } else { "off" }),
        );
    }
    let top = format!("c0-{}", CHAIN - 1);
    flags.insert(
        "deep".into(),
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"$ref": top}, "on", "off"]}}),
    );
    flags.insert("big".into(), flag_of_size(limits.max_definition_bytes));
    let doc = json!({"flags": flags, "$evaluators": segments});
    let (s, b) = c.put(leader, "/v1/namespaces/full/flagd", doc).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["flags"], limits.max_flags, "{b}");
    assert_eq!(b["segments"], limits.max_segments, "{b}");

    let key = sdk_key(&c, leader, "full").await;
    let ctx = r#"{"context": {"targetingKey": "u1"}}"#.to_string();
    for (flag, want) in [
        ("deep", json!(true)),
        ("f0", json!(true)),
        ("f1", json!(false)),
    ] {
        let (s, b) = evaluate(&c, leader, &key, flag, ctx.clone()).await;
        assert_eq!(s, 200, "{flag}: {b}");
        assert_eq!(b["value"], want, "{flag}: {b}");
    }
    let (s, b) = evaluate(&c, leader, &key, "big", ctx.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["variant"], "on");

    // One step over each limit.
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/full/flags/one-more",
            bool_flag("on"),
        )
        .await;
    assert_refused(s, &b, "flags");
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/full/segments/one-more",
            json!({"==": [1, 1]}),
        )
        .await;
    assert_refused(s, &b, "segments");
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/full/flags/big",
            flag_of_size(limits.max_definition_bytes + 1),
        )
        .await;
    assert_refused(s, &b, "definition");
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/full/segments/c0-0",
            negations(DEPTH + 1),
        )
        .await;
    assert_refused(s, &b, "");
    assert!(b.to_string().contains("nested deeper"), "{b}");
    // Linking chain 1 under chain 2 makes a chain of 2 × CHAIN segments.
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/full/segments/c1-0",
            json!({"$ref": format!("c2-{}", CHAIN - 1)}),
        )
        .await;
    assert_refused(s, &b, "rule");
    assert!(b.to_string().contains("chain"), "{b}");

    // The same shapes, one over, in a document: each refused with its path.
    let mut over = Map::new();
    for i in 0..=limits.max_flags {
        over.insert(format!("f{i}"), bool_flag("on"));
    }
    let (s, b) = c
        .put(leader, "/v1/namespaces/full/flagd", json!({"flags": over}))
        .await;
    assert_refused(s, &b, "flags");
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/full/flagd",
            json!({"flags": {"big": flag_of_size(limits.max_definition_bytes + 1)}}),
        )
        .await;
    assert_refused(s, &b, "flags.big");

    // Nothing refused changed the namespace.
    let (s, b) = evaluate(&c, leader, &key, "f0", ctx).await;
    assert_eq!((s, &b["value"]), (200, &json!(true)), "{b}");
    c.shutdown().await;
}

/// Limits lowered through node options, each met exactly and then exceeded by one.
fn small(c: &mut NodeConfig) {
    c.state_limits.max_namespace_bytes = NS_BYTES;
    c.max_context_bytes = CONTEXT_BYTES;
    c.max_watch_streams_per_key = STREAMS;
}
const NS_BYTES: usize = 4096;
const CONTEXT_BYTES: usize = 1024;
const STREAMS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_bytes_context_size_and_streams_per_key_are_node_options() {
    let c = TestCluster::start(1, small).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "small").await;

    // Namespace bytes: one flag of exactly the total fits; anything more is refused.
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/small/flags/a",
            flag_of_size(NS_BYTES),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .put(leader, "/v1/namespaces/small/flags/b", bool_flag("on"))
        .await;
    assert_refused(s, &b, "flags");
    assert!(b.to_string().contains("bytes of definitions"), "{b}");
    // Shrinking `a` makes room again.
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/small/flags/a",
            flag_of_size(NS_BYTES - 200),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .put(leader, "/v1/namespaces/small/flags/b", bool_flag("on"))
        .await;
    assert_eq!(s, 200, "{b}");

    // Context size: a request body of exactly the limit evaluates; one byte more is refused.
    let key = sdk_key(&c, leader, "small").await;
    let body = |len: usize| {
        let base = r#"{"context":{"targetingKey":"u","pad":""}}"#.len();
        format!(
            r#"{{"context":{{"targetingKey":"u","pad":"{}"}}}}"#,
            "x".repeat(len - base)
        )
    };
    assert_eq!(body(CONTEXT_BYTES).len(), CONTEXT_BYTES);
    let (s, b) = evaluate(&c, leader, &key, "b", body(CONTEXT_BYTES)).await;
    assert_eq!((s, &b["value"]), (200, &json!(true)), "{b}");
    let (s, b) = evaluate(&c, leader, &key, "b", body(CONTEXT_BYTES + 1)).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["errorCode"], "INVALID_CONTEXT", "{b}");
    assert!(
        b["errorDetails"].as_str().unwrap().starts_with("context:"),
        "{b}"
    );

    // Watch streams per key: STREAMS open at once, the next is 429 until one closes.
    let watch = || {
        c.http
            .get(format!("{}/v1/namespaces/small/watch", c.node(leader).api))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(60))
            .send()
    };
    let mut open = Vec::new();
    for _ in 0..STREAMS {
        let r = watch().await.unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = watch().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    drop(open.pop());
    // The node frees the slot when it notices the closed stream (at its next heartbeat frame).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = watch().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

const PACE_PER_SEC: u32 = 4;
const PACE_BURST: u32 = 2;

/// A slow pace of SDK starts: a burst of 2, then one per 250 ms, queueing at most 1 s.
fn paced(c: &mut NodeConfig) {
    c.sdk_admission = flagstaff_node::config::SdkAdmission {
        per_sec: PACE_PER_SEC,
        burst: PACE_BURST,
        max_wait: Duration::from_secs(1),
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_and_snapshot_starts_are_paced_node_wide_and_refused_past_the_queue() {
    let c = TestCluster::start(1, paced).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "paced").await;
    let key = sdk_key(&c, leader, "paced").await;
    let base = format!("{}/v1/namespaces/paced", c.node(leader).api);

    // 12 starts at once, streams and snapshots, with the SDK key and the admin token: one
    // schedule for all of them.
    let t0 = tokio::time::Instant::now();
    let starts: Vec<_> = (0..12)
        .map(|i| {
            let route = if i % 2 == 0 { "watch" } else { "snapshot" };
            let token = if i % 3 == 0 { common::TOKEN } else { &key };
            let request = c
                .http
                .get(format!("{base}/{route}"))
                .bearer_auth(token)
                .timeout(Duration::from_secs(30))
                .send();
            tokio::spawn(async move {
                let r = request.await.unwrap();
                (t0.elapsed(), r)
            })
        })
        .collect();
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for s in starts {
        let (at, r) = s.await.unwrap();
        match r.status().as_u16() {
            200 => admitted.push((at, r)),
            429 => refused.push(r),
            other => panic!("a start answered {other}"),
        }
    }
    // A burst, then at most one start per 250 ms, queueing at most 1 s: at least 2 + 4 go in,
    // and 12 cannot all fit in that second, so some are refused (each with a Retry-After).
    assert!(admitted.len() >= 6, "{} admitted", admitted.len());
    assert!(!refused.is_empty(), "none refused: the queue is unbounded");
    admitted.sort_by_key(|(at, _)| *at);
    let last = admitted.last().unwrap().0;
    let paced_starts = (admitted.len() as u32).saturating_sub(PACE_BURST);
    assert!(
        last >= Duration::from_secs(1) / PACE_PER_SEC * paced_starts,
        "{} starts admitted within {last:?}: faster than the pace",
        admitted.len()
    );
    let mut retry_after = 0;
    for r in &refused {
        let body = r.headers()["retry-after"].to_str().unwrap().to_string();
        retry_after = retry_after.max(body.parse::<u64>().unwrap());
    }
    assert!(retry_after >= 1);
    let r = refused.pop().unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "RATE_LIMITED"
    );
    drop(admitted);

    // After the Retry-After the schedule has room again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = c
        .http
        .get(format!("{base}/snapshot"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.shutdown().await;
}
