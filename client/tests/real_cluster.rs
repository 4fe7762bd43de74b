//! The SDK against real Flagstaff nodes in this process (real sockets, real RocksDB), for what
//! needs a hand on the nodes' state: no rollback from a partitioned node that is behind, keys
//! refused and revoked, a client path that goes silent while the cluster stays healthy.
//! Real processes (kill -9, SIGSTOP, partitions, failover latency): `real_processes.rs`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{TestCluster, TOKEN};
use common::{bool_flag, wait_until, Evaluator, Recorder};
use flagstaff_client::{context, Client, Event, Reason, Source, Status};
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

fn tune(cfg: &mut flagstaff_node::NodeConfig) {
    cfg.max_staleness = Duration::from_millis(1000);
}

/// Creates namespace `checkout` with flags `f` (off) and `limits`; returns an SDK key for it.
async fn seed(c: &TestCluster) -> String {
    assert_eq!(c.put(1, "/v1/namespaces/checkout", json!({})).await.0, 200);
    assert_eq!(
        c.put(1, "/v1/namespaces/checkout/flags/f", bool_flag("off"))
            .await
            .0,
        200
    );
    let limits = json!({"state":"ENABLED","variants":{"small":{"max":5},"big":{"max":50}},"defaultVariant":"small"});
    assert_eq!(
        c.put(1, "/v1/namespaces/checkout/flags/limits", limits)
            .await
            .0,
        200
    );
    let (s, body) = c
        .post(
            1,
            "/v1/namespaces/checkout/sdk-keys",
            json!({"name": "web"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

/// Sets flag `f` through node `via`, retrying through elections; returns the new revision.
async fn set_f(c: &TestCluster, via: u64, on: bool) -> u64 {
    let deadline = Instant::now() + LONG;
    let patch = json!({"defaultVariant": if on { "on" } else { "off" }});
    // One key for this write's retries: it applies once even if a retry follows a timeout.
    let idempotency_key = format!("set-f-{:016x}", rand::random::<u64>());
    loop {
        let resp = c
            .http
            .patch(format!(
                "{}/v1/namespaces/checkout/flags/f",
                c.node(via).api
            ))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", &idempotency_key)
            .json(&patch)
            .send()
            .await;
        if let Ok(r) = resp {
            if r.status().is_success() {
                let v: serde_json::Value = r.json().await.unwrap();
                return v["revision"].as_u64().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "write through node {via} never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client_for(c: &TestCluster, key: &str, ids: &[u64]) -> flagstaff_client::ClientBuilder {
    Client::builder("checkout", key)
        .endpoints(ids.iter().map(|id| c.node(*id).api.clone()))
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .heartbeat_timeout(Duration::from_millis(2500))
        .stale_after(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_never_rolls_the_app_back_and_is_left() {
    let mut c = TestCluster::start(3, tune).await;
    let key = seed(&c).await;
    let leader = c.wait_leader().await;
    let lagging = c.follower_of(leader);
    // Cut a follower off, then move the cluster on without it.
    c.isolate(lagging);
    let rev = set_f(&c, leader, true).await;
    assert!(c.revision(lagging) < rev);

    let rec = Recorder::default();
    let client = client_for(&c, &key, &[leader, lagging])
        .on_event(rec.listener())
        .build()
        .unwrap();
    wait_until("the current revision", LONG, || {
        client.revision() >= Some(rev)
    })
    .await;
    let seen = rec.all().len();
    let ctx = context();
    let eval = Evaluator::start(client.clone(), "f");

    // Now the only reachable endpoint is the cut-off node, which is behind: it must be refused
    // (it answers 503: it cannot prove freshness nor reach our revision), and nothing goes back.
    c.stop(leader).await;
    let lagging_api = c.node(lagging).api.clone();
    wait_until("several refusals from the cut-off node", LONG, || {
        rec.all()[seen..]
            .iter()
            .filter(|e| matches!(e, Event::Error { endpoint: Some(ep), .. } if *ep == lagging_api))
            .count()
            >= 3
    })
    .await;
    assert!(client.bool("f", &ctx, false), "rolled back");
    assert_eq!(client.revision(), Some(rev));
    wait_until("STALE while only a cut-off node answers", LONG, || {
        client.status() == Status::Stale
    })
    .await;
    assert!(client.bool_details("f", &ctx, false).stale);

    // Heal: the lagging node and the other follower form a majority, it catches up, and the
    // client is fresh again through it.
    c.heal();
    wait_until("READY again through the healed node", LONG, || {
        client.status() == Status::Ready
    })
    .await;
    let (_, bad, first_bad) = eval.finish();
    assert_eq!(bad, 0, "{first_bad:?}");
    assert!(client.bool("f", &ctx, false));
    assert!(!rec.all()[seen..]
        .iter()
        .any(|e| matches!(e, Event::ConfigurationChanged { revision: Some(r), .. } if *r < rev)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_key_is_an_error_without_data_and_a_revoked_key_keeps_the_last_values() {
    let c = TestCluster::start(3, tune).await;
    let key = seed(&c).await;

    let rec = Recorder::default();
    let wrong = client_for(&c, "fsk_not-a-key", &[1, 2, 3])
        .on_event(rec.listener())
        .build()
        .unwrap();
    wait_until("status ERROR", LONG, || wrong.status() == Status::Error).await;
    assert!(rec.any(|e| matches!(e, Event::Error { fatal: true, .. })));
    let d = wrong.bool_details("f", &context(), true);
    assert_eq!(
        (d.value, d.reason, d.source),
        (true, Reason::Error, Source::Default)
    );

    let client = client_for(&c, &key, &[1, 2, 3]).build().unwrap();
    client.wait_ready(LONG).await.unwrap();
    wait_until("an open stream", LONG, || {
        client.metrics().snapshots_accepted >= 1
    })
    .await;
    let (s, body, _) = c
        .request(
            1,
            reqwest::Method::DELETE,
            "/v1/namespaces/checkout/sdk-keys/web",
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    wait_until("the node refusing the revoked key", LONG, || {
        client.last_error().is_some_and(|e| e.contains("refuses"))
    })
    .await;
    // The data held stays in use (and will be reported stale in time), never a default.
    let d = client.bool_details("f", &context(), true);
    assert_eq!((d.value, d.source), (false, Source::Network));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_path_to_each_node_in_turn_is_detected_and_left() {
    use common::freeze_proxy::FreezeProxy;
    let c = TestCluster::start(3, tune).await;
    let key = seed(&c).await;
    let mut proxies = Vec::new();
    for n in &c.nodes {
        proxies.push(FreezeProxy::start(n.client_addr).await);
    }
    let heartbeat_timeout = Duration::from_millis(2500);
    let client = Client::builder("checkout", key.as_str())
        .endpoints(proxies.iter().map(|p| p.url.clone()))
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .heartbeat_timeout(heartbeat_timeout)
        .request_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    client.wait_ready(LONG).await.unwrap();
    let eval = Evaluator::start(client.clone(), "f");
    let ctx = context();
    let mut on = false;
    let mut latencies = Vec::new();
    // Freeze each node's path in turn (one of them carries our stream); writes go to a node
    // that is not frozen (the cluster itself is healthy: only the client's path is silent).
    for (i, p) in proxies.iter().enumerate() {
        p.freeze(true);
        on = !on;
        let via = if i == 0 { 2 } else { 1 };
        let written = Instant::now();
        let rev = set_f(&c, via, on).await;
        wait_until(
            &format!("the write with node {} frozen", i + 1),
            LONG,
            || client.revision() >= Some(rev),
        )
        .await;
        latencies.push(written.elapsed());
        assert_eq!(client.bool("f", &ctx, !on), on);
        p.freeze(false);
    }
    let (total, bad, first_bad) = eval.finish();
    eprintln!("write-to-SDK latency with each node frozen in turn: {latencies:?} (heartbeat timeout {heartbeat_timeout:?}); {total} evaluations");
    assert_eq!(bad, 0, "{first_bad:?}");
    // The frozen stream was noticed by silence, within about the heartbeat timeout.
    let slowest = latencies.iter().max().copied().unwrap();
    assert!(
        slowest < heartbeat_timeout + Duration::from_secs(4),
        "slowest {slowest:?}"
    );
    assert!(client.metrics().reconnects >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_https_the_client_follows_the_cluster_with_its_ca_file_and_trusts_nothing_else() {
    let c = TestCluster::start_tls(3, tune).await;
    let key = seed(&c).await;
    let ca = c.tls.as_ref().unwrap().ca.clone();
    let ids = [1, 2, 3];
    assert!(c.node(1).api.starts_with("https://"));

    // With the cluster's CA: data, then a change pushed over the TLS watch stream.
    let client = client_for(&c, &key, &ids).ca_file(&ca).build().unwrap();
    wait_until("READY over https", LONG, || {
        client.status() == Status::Ready
    })
    .await;
    let ctx = context();
    assert!(!client.bool("f", &ctx, true));
    let leader = c.wait_leader().await;
    let rev = set_f(&c, leader, true).await;
    wait_until("the change pushed", LONG, || client.revision() >= Some(rev)).await;
    assert_eq!(
        client.bool_details("f", &ctx, false).source,
        Source::Network
    );

    // Without it, no node is trusted: the call-site default, and the error says why.
    let rec = Recorder::default();
    let untrusting = client_for(&c, &key, &ids)
        .on_event(rec.listener())
        .build()
        .unwrap();
    wait_until("a refused certificate reported", LONG, || {
        rec.any(|e| matches!(e, Event::Error { message, .. } if message.contains("certificate")))
    })
    .await;
    assert_eq!(untrusting.revision(), None);
    assert!(untrusting.bool("f", &ctx, true));

    // A CA file that is not one is a configuration error, not a silent fallback.
    let bad = c.tls.as_ref().unwrap().dir.join("not-a-ca.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    let refused = client_for(&c, &key, &ids).ca_file(&bad).build();
    assert!(refused.is_err());
    c.shutdown().await;
}
