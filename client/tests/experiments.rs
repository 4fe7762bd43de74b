//! A/B tests from the SDK's side, against a live 3-node cluster (real sockets, real RocksDB):
//! two application processes embedding the SDK (`examples/ab_simulator.rs`) evaluate an
//! experiment flag for simulated users whose true conversion rates are known, track their
//! conversions, and keep sending while the leader is stopped halfway. The results endpoint must then hold every exposure and conversion exactly once and
//! recover the rates within their intervals.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use common::cluster::{bool_flag, TestCluster};
use common::{example_bin, json_lines};
use serde_json::Value;

fn tune(cfg: &mut flagstaff_node::NodeConfig) {
    cfg.events_interval = Duration::from_millis(200);
}

/// One `examples/ab_simulator.rs` process: its users convert at 10% in control and 25% in
/// treatment.
struct Simulator {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl Simulator {
    fn start(endpoints: &str, key: &str, users: (u64, u64), also: &str) -> Simulator {
        let mut child = Command::new(example_bin("ab_simulator"))
            .env("FLAGSTAFF_ENDPOINTS", endpoints)
            .env("FLAGSTAFF_NAMESPACE", "shop")
            .env("FLAGSTAFF_SDK_KEY", key)
            .env("FLAGSTAFF_FLAG", "checkout")
            .env("FLAGSTAFF_EVENT", "purchase")
            .env("FLAGSTAFF_USERS", format!("{}-{}", users.0, users.1))
            .env("FLAGSTAFF_RATES", "control=10,treatment=25")
            .env("FLAGSTAFF_ALSO_EVALUATE", also)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the simulator");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let lines = json_lines(stdout);
        Simulator {
            child,
            stdin,
            lines,
        }
    }

    /// The next line naming `what` (within 60 s).
    fn wait_for(&mut self, what: &str) -> Result<Value, String> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .map_err(|e| format!("no {what:?} line from the simulator: {e}"))?;
        if line.get(what).is_none() {
            return Err(format!("expected {what:?}, got {line}"));
        }
        Ok(line)
    }

    fn go(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"go\n");
            let _ = stdin.flush();
        }
    }

    /// Closes its standard input (it stops by itself), and kills it if it has not within 10 s.
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
async fn sdk_exposures_and_conversions_survive_a_leader_kill_and_recover_the_rates(
) -> Result<(), String> {
    let mut c = TestCluster::start(3, tune).await;
    let leader = c.wait_leader().await;
    let key = c
        .experiment_namespace(leader, "shop", "checkout", ("control", "treatment"))
        .await;
    let (s, b) = c
        .put(leader, "/v1/namespaces/shop/flags/banner", bool_flag("off"))
        .await;
    assert_eq!(s, 200, "{b}");
    let endpoints: Vec<String> = (1..=3).map(|id| c.node(id).api.clone()).collect();

    // Two application processes, 1,000 users each; the leader is stopped when both are
    // halfway. The second also evaluates `banner`, a flag that is not an experiment: its
    // evaluations are reported too ("last evaluated").
    let mut apps: Vec<Simulator> = (0..2u64)
        .map(|n| {
            Simulator::start(
                &endpoints.join(","),
                &key,
                (n * 1_000, (n + 1) * 1_000),
                if n == 1 { "banner" } else { "" },
            )
        })
        .collect();
    for app in &mut apps {
        tokio::task::block_in_place(|| app.wait_for("half"))?;
    }
    c.stop(leader).await;
    for app in &mut apps {
        app.go();
    }
    let users = 2_000u64;
    let mut exposed = BTreeMap::<String, u64>::new();
    let mut converted = BTreeMap::<String, u64>::new();
    for app in &mut apps {
        let done = tokio::task::block_in_place(|| app.wait_for("done"))?;
        for (into, what) in [(&mut exposed, "exposed"), (&mut converted, "converted")] {
            for (variant, n) in done["done"][what].as_object().unwrap() {
                *into.entry(variant.clone()).or_default() += n.as_u64().unwrap();
            }
        }
    }
    assert_eq!(
        exposed.values().sum::<u64>(),
        users,
        "every user got a variant"
    );

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
            "exposures still missing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
    for app in apps {
        app.stop();
    }
    c.shutdown().await;
    Ok(())
}

/// `Client::shutdown` returns only once the last flush is done: with an interval far longer
/// than the test, the exposures reach the cluster through that flush alone, and every one of
/// them is recorded when it returns (a node answers a batch once it is committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_after_the_last_flush_of_events() -> Result<(), String> {
    let c = TestCluster::start(3, tune).await;
    let leader = c.wait_leader().await;
    let key = c
        .experiment_namespace(leader, "shop", "checkout", ("control", "treatment"))
        .await;
    let client = flagstaff_client::Client::builder("shop", key)
        .endpoints(vec![c.node(leader).api.clone()])
        .events_interval(Duration::from_secs(3600))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let users = 300u64;
    for i in 0..users {
        let ctx = flagstaff_client::context().with_targeting_key(format!("user-{i}"));
        let d = client.string_details("checkout", &ctx, "none");
        assert!(d.variant.is_some(), "{d:?}");
    }
    client.shutdown().await;
    let report = results(&c, leader).await.ok_or("no results")?;
    assert_eq!(total_exposures(&report), users, "{report}");
    Ok(())
}
