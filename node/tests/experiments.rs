//! A/B tests through a live 3-node cluster: OFREP evaluations of an experiment flag count
//! exposures, raw conversions are attributed to the users' variants, the results recover the
//! conversion rates the simulated users really had; a retried batch counts once; a skewed
//! split is flagged; malformed events are refused with their path; and a leader kill while
//! batches arrive loses no acknowledged one.

mod common;

use common::TestCluster;
use flagstaff_experiments::DistinctCount;
use flagstaff_node::NodeConfig;
use serde_json::{json, Value};

fn fast_flush(c: &mut NodeConfig) {
    c.events_interval = std::time::Duration::from_millis(200);
}

const FLAG: &str = "checkout";

async fn setup(c: &TestCluster, leader: u64) -> String {
    c.experiment_namespace(leader, "shop", FLAG, ("control", "treatment"))
        .await
}

async fn send_events(c: &TestCluster, node: u64, key: &str, body: &Value) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}/v1/namespaces/shop/events", c.node(node).api))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("events request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn results(c: &TestCluster, node: u64) -> Value {
    let (s, b) = c
        .get(
            node,
            &format!("/v1/namespaces/shop/experiments/{FLAG}?consistency=linearizable"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b
}

fn arm<'a>(report: &'a Value, variant: &str) -> &'a Value {
    report["report"]["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["variant"] == variant)
        .unwrap_or_else(|| panic!("no arm {variant} in {report}"))
}

/// Whether simulated user `i` converts in `variant`: 10% of control users, 30% of treatment
/// users, by a fixed pattern (so the test knows the true rates exactly).
fn converts(i: u64, variant: &str) -> bool {
    let slot = (i * 37) % 100;
    match variant {
        "control" => slot < 10,
        _ => slot < 30,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exposures_and_conversions_give_the_true_rates() {
    let c = TestCluster::start(3, fast_flush).await;
    let leader = c.wait_leader().await;
    let key = setup(&c, leader).await;
    let follower = c.follower_of(leader);

    // 1,200 users evaluate the flag through OFREP on a follower; each exposure is counted.
    let users = 1_200u64;
    let mut assigned = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for i in 0..users {
        let r = c
            .http
            .post(format!(
                "{}/ofrep/v1/evaluate/flags/{FLAG}",
                c.node(follower).api
            ))
            .bearer_auth(&key)
            .json(&json!({"context": {"targetingKey": format!("user-{i}")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let b: Value = r.json().await.unwrap();
        assigned
            .entry(b["variant"].as_str().unwrap().to_string())
            .or_default()
            .push(i);
    }
    // Conversions arrive raw, through another node, which attributes them itself.
    let mut track = Vec::new();
    let mut converted = std::collections::BTreeMap::<String, u64>::new();
    for (variant, ids) in &assigned {
        for &i in ids {
            if converts(i, variant) {
                *converted.entry(variant.clone()).or_default() += 1;
                track.push(json!({"event": "purchase", "value": 20.0,
                    "context": {"targetingKey": format!("user-{i}")}}));
            }
        }
    }
    let (s, b) = send_events(&c, leader, &key, &json!({"batch": "raw-1", "track": track})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["conversions"].as_u64(), Some(track.len() as u64), "{b}");
    // The same batch again, through a follower that may not have applied it yet: recorded
    // once either way (the conversion counts below are exact). The leader, which applied it
    // before answering, says it is a duplicate.
    let again = json!({"batch": "raw-1", "track": track});
    let (s, b) = send_events(&c, follower, &key, &again).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = send_events(&c, leader, &key, &again).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["duplicate"], true, "{b}");

    // The node's own exposures are flushed within an interval; wait for all of them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let r = results(&c, follower).await;
        let total: u64 = r["report"]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["exposures"].as_u64().unwrap())
            .sum();
        if total == users {
            break r;
        }
        assert!(total < users, "more exposures than evaluations: {r}");
        assert!(
            std::time::Instant::now() < deadline,
            "exposures missing: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(report["weights_from"], "fractional");
    assert_eq!(report["report"]["srm"]["mismatch"], false, "{report}");
    for (variant, ids) in &assigned {
        let a = arm(&report, variant);
        assert_eq!(a["exposures"].as_u64(), Some(ids.len() as u64));
        let est_users = a["users"].as_f64().unwrap();
        assert!(
            (est_users - ids.len() as f64).abs() < 0.03 * ids.len() as f64,
            "{variant}: {est_users} users estimated for {}",
            ids.len()
        );
        let m = &a["metrics"][0];
        assert_eq!(m["metric"], "purchase");
        assert_eq!(m["conversions"].as_u64(), converted.get(variant).copied());
        let true_rate = converted[variant] as f64 / ids.len() as f64;
        let (low, high) = (
            m["rate"]["low"].as_f64().unwrap(),
            m["rate"]["high"].as_f64().unwrap(),
        );
        assert!(
            low <= true_rate && true_rate <= high,
            "{variant}: {true_rate} outside [{low}, {high}]"
        );
        assert!((m["mean_value"]["value"].as_f64().unwrap() - 20.0).abs() < 1e-9);
    }
    let uplift = &arm(&report, "treatment")["metrics"][0]["uplift"];
    assert_eq!(
        uplift["significant"], true,
        "30% vs 10% is detected: {uplift}"
    );
    assert!(uplift["chance_to_beat_control"].as_f64().unwrap() > 0.95);
    // The list names it, and every node answers the same numbers.
    let (s, list) = c.get(leader, "/v1/namespaces/shop/experiments").await;
    assert_eq!(s, 200);
    assert_eq!(list["experiments"][0]["flag"], FLAG);
    assert_eq!(list["experiments"][0]["exposures"].as_u64(), Some(users));
    for id in 1..=3 {
        assert_eq!(
            results(&c, id).await["report"],
            report["report"],
            "node {id}"
        );
    }
    c.shutdown().await;
}

fn sketch_of(prefix: &str, n: u64) -> DistinctCount {
    let mut s = DistinctCount::new();
    for i in 0..n {
        s.insert(&format!("{prefix}-{i}"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skewed_split_is_flagged_and_bad_events_are_refused_with_their_path() {
    let c = TestCluster::start(3, fast_flush).await;
    let leader = c.wait_leader().await;
    let key = setup(&c, leader).await;

    // 6,000 against 4,000 users on a 50/50 split.
    let body = json!({"batch": "skewed", "exposures": [
        {"flag": FLAG, "variant": "control", "count": 6000, "users": sketch_of("c", 6000)},
        {"flag": FLAG, "variant": "treatment", "count": 4000, "users": sketch_of("t", 4000)},
        {"flag": "no-such-flag", "variant": "x", "count": 1}]});
    let (s, b) = send_events(&c, leader, &key, &body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ignored"][0]["path"], "exposures[2]", "{b}");
    let r = results(&c, leader).await;
    assert_eq!(r["report"]["srm"]["mismatch"], true, "{r}");
    assert!(r["report"]["srm"]["p_value"].as_f64().unwrap() < 0.001);

    for (body, path) in [
        (
            json!({"exposures": [{"flag": FLAG, "variant": "control", "count": -1}]}),
            "exposures[0].count",
        ),
        (
            json!({"exposures": [{"flag": FLAG, "variant": "control", "count": 1, "users": [0]}]}),
            "exposures[0].users",
        ),
        (
            json!({"conversions": [{"flag": FLAG, "variant": "control", "metric": "purchase", "count": 1, "valueCount": 2}]}),
            "conversions[0].valueCount",
        ),
        (
            json!({"track": [{"event": "purchase", "context": {}}]}),
            "track[0].context.targetingKey",
        ),
        (
            json!({"track": [{"event": "has space", "context": {"targetingKey": "u"}}]}),
            "track[0].event",
        ),
        (json!({"batch": "not/ok"}), "batch"),
        (
            json!({"track": [{"event": "purchase", "value": 1e300, "context": {"targetingKey": "u"}}]}),
            "track[0].value",
        ),
        (
            json!({"conversions": [{"flag": FLAG, "variant": "control", "metric": "purchase", "count": 1, "valueSumSquares": 1e300}]}),
            "conversions[0].valueSumSquares",
        ),
        (json!({"surprise": 1}), ""),
    ] {
        let (s, b) = send_events(&c, leader, &key, &body).await;
        assert_eq!(s, 400, "{body}: {b}");
        let faults = b["error"]["faults"].as_array().cloned().unwrap_or_default();
        assert!(
            faults.iter().any(|f| f["path"] == path)
                || (path.is_empty() && b.to_string().contains("surprise")),
            "{body}: expected a fault at {path:?}, got {b}"
        );
    }
    // An SDK key of another namespace cannot write here; an unauthenticated caller neither.
    let (s, _) = send_events(&c, leader, "wrong-key", &json!({})).await;
    assert_eq!(s, 401);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_kill_during_intake_loses_no_acknowledged_batch() {
    let mut c = TestCluster::start(3, fast_flush).await;
    let leader = c.wait_leader().await;
    let key = setup(&c, leader).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    // 40 batches of 5 exposures each, sent to the two other nodes in turn; the leader
    // crashes after the tenth (cut off first, so it cannot hand over). A batch not acknowledged
    // is retried with its id until it is.
    let mut acknowledged = 0u64;
    for n in 0..40u64 {
        if n == 10 {
            c.crash(leader).await;
        }
        let body = json!({"batch": format!("b{n}"), "exposures": [
            {"flag": FLAG, "variant": if n % 2 == 0 { "control" } else { "treatment" }, "count": 5}]});
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut attempt = 0usize;
        loop {
            let node = others[(n as usize + attempt) % others.len()];
            let (s, b) = send_events(&c, node, &key, &body).await;
            if s == 200 {
                acknowledged += 5;
                break;
            }
            assert!(matches!(s, 429 | 503 | 504), "batch {n}: {s} {b}");
            assert!(
                std::time::Instant::now() < deadline,
                "batch {n} never acknowledged: {b}"
            );
            attempt += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let survivor = others[0];
    let r = results(&c, survivor).await;
    let total: u64 = r["report"]["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["exposures"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total, acknowledged,
        "every acknowledged batch, each once: {r}"
    );
    c.shutdown().await;
}
