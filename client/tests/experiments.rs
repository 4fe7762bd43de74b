//! A/B tests from the SDK's side, against a live 3-node cluster (real sockets, real RocksDB):
//! two SDK instances evaluate an experiment flag for simulated users whose true conversion
//! rates are known, track their conversions, and keep sending while the leader is stopped
//! halfway. The results endpoint must then hold every exposure and conversion exactly once and
//! recover the rates within their intervals.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{bool_flag, experiment_flag, TestCluster};
use flagstaff_client::{context, Client};
use serde_json::{json, Value};

fn tune(cfg: &mut flagstaff_node::NodeConfig) {
    cfg.events_interval = Duration::from_millis(200);
}

/// Whether simulated user `i` converts in `variant`: 10% of control, 25% of treatment.
fn converts(i: u64, variant: &str) -> bool {
    let slot = (i * 61) % 100;
    match variant {
        "control" => slot < 10,
        _ => slot < 25,
    }
}

async fn results(c: &TestCluster, via: u64) -> Option<Value> {
    let (s, b) = c
        .get(
            via,
            "/v1/namespaces/shop/experiments/checkout?consistency=linearizable",
        )
        .await;
    (s == 200).then_some(b)
}

fn total_exposures(r: &Value) -> u64 {
    r["report"]["arms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["exposures"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_exposures_and_conversions_survive_a_leader_kill_and_recover_the_rates() {
    let mut c = TestCluster::start(3, tune).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "shop").await;
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/shop/flags/checkout",
            experiment_flag("control", "treatment"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .put(leader, "/v1/namespaces/shop/flags/banner", bool_flag("off"))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .post(
            leader,
            "/v1/namespaces/shop/sdk-keys",
            json!({"name": "shop"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let key = b["secret"].as_str().unwrap().to_string();
    let endpoints: Vec<String> = (1..=3).map(|id| c.node(id).api.clone()).collect();
    let sdk = |_: usize| {
        Client::builder("shop", key.clone())
            .endpoints(endpoints.clone())
            .events_interval(Duration::from_millis(300))
            .request_timeout(Duration::from_secs(3))
            .build()
            .expect("client")
    };
    let sdks = [sdk(0), sdk(1)];
    for s in &sdks {
        s.wait_ready(Duration::from_secs(20)).await.expect("ready");
    }

    // A flag that is not an experiment: its evaluations are reported too ("last evaluated").
    assert!(!sdks[0].bool("banner", &context(), true));
    let users = 2_000u64;
    let mut exposed = BTreeMap::<String, u64>::new();
    let mut converted = BTreeMap::<String, u64>::new();
    for i in 0..users {
        if i == users / 2 {
            c.stop(leader).await;
        }
        let s = &sdks[(i % 2) as usize];
        let ctx = context().with_targeting_key(format!("user-{i}"));
        let d = s.string_details("checkout", &ctx, "none");
        let variant = d.variant.expect("a variant for every user");
        *exposed.entry(variant.clone()).or_default() += 1;
        if converts(i, &variant) {
            *converted.entry(variant.clone()).or_default() += 1;
            s.track("purchase", &ctx, Some(30.0));
        }
    }

    // Every exposure arrives once the SDKs' next batches are committed.
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let report = loop {
        if let Some(r) = results(&c, survivor).await {
            let total = total_exposures(&r);
            assert!(total <= users, "more exposures than evaluations: {r}");
            if total == users {
                break r;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "exposures still missing; SDK metrics {:?} {:?}",
            sdks[0].metrics(),
            sdks[1].metrics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for s in &sdks {
        assert_eq!(s.metrics().events_dropped, 0, "{:?}", s.metrics());
    }
    assert_eq!(report["report"]["srm"]["mismatch"], false, "{report}");
    for (variant, n) in &exposed {
        let arm = report["report"]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["variant"] == variant.as_str())
            .unwrap();
        assert_eq!(arm["exposures"].as_u64(), Some(*n), "{variant}: {arm}");
        let users_estimate = arm["users"].as_f64().unwrap();
        assert!(
            (users_estimate - *n as f64).abs() < 0.03 * *n as f64,
            "{variant}: {users_estimate} users for {n}"
        );
        // Conversions are tracked after exposures and may arrive one batch later.
        let conversions = converted.get(variant).copied().unwrap_or(0);
        assert!(arm["metrics"][0]["conversions"].as_u64().unwrap() <= conversions);
    }
    // Conversions: wait until all of them are in, then check the rates and the winner.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let r = results(&c, survivor).await.expect("results");
        let got: u64 = r["report"]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["metrics"][0]["conversions"].as_u64().unwrap())
            .sum();
        let want: u64 = converted.values().sum();
        assert!(got <= want, "more conversions than tracked: {r}");
        if got == want {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "conversions missing: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for arm in report["report"]["arms"].as_array().unwrap() {
        let variant = arm["variant"].as_str().unwrap();
        let m = &arm["metrics"][0];
        let true_rate = converted[variant] as f64 / exposed[variant] as f64;
        let (low, high) = (
            m["rate"]["low"].as_f64().unwrap(),
            m["rate"]["high"].as_f64().unwrap(),
        );
        assert!(
            low <= true_rate && true_rate <= high,
            "{variant}: true rate {true_rate} outside [{low}, {high}]"
        );
        assert!((m["mean_value"]["value"].as_f64().unwrap() - 30.0).abs() < 1e-9);
    }
    let treatment = report["report"]["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["variant"] == "treatment")
        .unwrap();
    assert_eq!(
        treatment["metrics"][0]["uplift"]["significant"], true,
        "25% against 10% is detected: {treatment}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, flag) = c.get(survivor, "/v1/namespaces/shop/flags/banner").await;
        assert_eq!(s, 200, "{flag}");
        if flag["last_evaluated_ms"].as_u64().is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "banner never reported evaluated: {flag}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &sdks {
        s.close();
    }
    c.shutdown().await;
}
