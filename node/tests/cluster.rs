//! Multi-node behaviour with real nodes on loopback: forwarding, linearizable and bounded reads,
//! conditions, idempotency, partitions, snapshots, restarts, leadership hand-over and learners.

mod common;

use std::time::Duration;

use common::{bool_flag, TestCluster, TOKEN};
use flagstaff_node::NodeConfig;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

fn defaults(_: &mut NodeConfig) {}

async fn namespace(c: &TestCluster, node: u64, ns: &str) {
    c.create_namespace(node, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_on_a_follower_is_visible_to_a_linearizable_read_elsewhere() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f1 = c.follower_of(leader);
    let f2 = (1..=3).find(|id| *id != leader && *id != f1).unwrap();
    namespace(&c, f1, "prod").await;
    let (s, w) = c
        .put(f1, "/v1/namespaces/prod/flags/checkout", bool_flag("on"))
        .await;
    assert_eq!(s, 200, "{w}");
    let rev = w["revision"].as_u64().unwrap();

    for reader in [f2, leader] {
        let (s, r, h) = c
            .request(
                reader,
                Method::GET,
                "/v1/namespaces/prod/flags/checkout?consistency=linearizable",
                None,
            )
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["version"].as_u64(), Some(rev));
        assert_eq!(r["definition"]["defaultVariant"], "on");
        let header_rev: u64 = h["flagstaff-revision"].to_str().unwrap().parse().unwrap();
        assert!(header_rev >= rev);
        assert_eq!(h["flagstaff-cluster"], "test-cluster");
        assert_eq!(h["flagstaff-leader"].to_str().unwrap(), leader.to_string());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_writes_and_idempotent_retries() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    namespace(&c, leader, "prod").await;
    let path = "/v1/namespaces/prod/flags/a";

    // Create-only succeeds once, then 412 with the current version.
    let create = |node| {
        c.http
            .put(format!("{}{path}", c.node(node).api))
            .bearer_auth(TOKEN)
            .header("If-None-Match", "*")
            .json(&bool_flag("off"))
            .send()
    };
    let r = create(f).await.unwrap();
    assert_eq!(r.status(), 200);
    let v1: u64 = r.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    let r = create(leader).await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["current_version"].as_u64(),
        Some(v1)
    );

    // If-Match with a stale version: 412, and nothing changes.
    let before = c.revision(leader);
    let r = c
        .http
        .put(format!("{}{path}", c.node(f).api))
        .bearer_auth(TOKEN)
        .header("If-Match", "\"1\"")
        .json(&bool_flag("on"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(c.revision(leader), before);
    let r = c
        .http
        .put(format!("{}{path}", c.node(f).api))
        .bearer_auth(TOKEN)
        .header("If-Match", format!("\"{v1}\""))
        .json(&bool_flag("on"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The same Idempotency-Key and body applies once and returns the first result, from any node.
    let send = |node, body: Value| {
        c.http
            .put(format!("{}/v1/namespaces/prod/flags/b", c.node(node).api))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "retry-1")
            .json(&body)
            .send()
    };
    let first: Value = send(f, bool_flag("on"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rev_after_first = c.revision(leader);
    let again: Value = send(leader, bool_flag("on"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["revision"], again["revision"]);
    assert_eq!(
        c.revision(leader),
        rev_after_first,
        "a retried write must not apply twice"
    );
    let reused = send(f, bool_flag("off")).await.unwrap();
    assert_eq!(reused.status(), 422);

    // PATCH is the kill switch.
    let r = c
        .http
        .patch(format!("{}{path}", c.node(f).api))
        .bearer_auth(TOKEN)
        .json(&json!({"state": "DISABLED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, got) = c.get(leader, path).await;
    assert_eq!(got["definition"]["state"], "DISABLED");
    assert_eq!(got["definition"]["defaultVariant"], "on");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_4xx_and_never_reaches_the_log() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    namespace(&c, leader, "prod").await;
    // Let every node apply the namespace, then record the log position.
    let (s, _) = c.get(leader, "/v1/namespaces/prod").await;
    assert_eq!(s, 200);
    let log_before = c.last_log_index(leader);
    let rev_before = c.revision(leader);
    let api = c.node(leader).api.clone();
    let url = |p: &str| format!("{api}{p}");

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth(TOKEN).body("{not json"), 400, "not valid JSON"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth(TOKEN).json(&json!({"state":"ENABLED","variants":{"on":true},"defaultVariant":"on","colour":1})), 400, "colour"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth(TOKEN).json(&json!({"state":"ENABLED","variants":{"on":true},"defaultVariant":"blue"})), 400, "defaultVariant"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth(TOKEN).json(&json!({"state":"ENABLED","variants":{"on":true,"off":"no"},"defaultVariant":"on"})), 400, "variants"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth(TOKEN).header("connection", "close").body(vec![b' '; 2 << 20]), 413, "larger"),
        (c.http.put(url("/v1/namespaces/prod/flags/bad%20name")).bearer_auth(TOKEN).json(&bool_flag("on")), 400, "not a valid name"),
        (c.http.put(url("/v1/namespaces/-x/flags/a")).bearer_auth(TOKEN).json(&bool_flag("on")), 400, "not a valid name"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).json(&bool_flag("on")), 401, "token"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth("wrong").json(&bool_flag("on")), 401, "token"),
        (c.http.put(url("/v1/namespaces/prod/flags/x")).bearer_auth(TOKEN).header("If-Match", "soon").json(&bool_flag("on")), 400, "If-Match"),
        (c.http.get(url("/v1/namespaces/prod/flags?consistency=maybe")).bearer_auth(TOKEN), 400, "consistency"),
        (c.http.put(url("/v1/namespaces/prod")).bearer_auth(TOKEN).json(&json!({"owner": "me"})), 400, "owner"),
    ];
    for (req, want, needle) in cases {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{body}");
        let msg = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
            + &body["error"]["faults"].to_string();
        assert!(msg.contains(needle), "{needle:?} not in {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    assert_eq!(
        c.last_log_index(leader),
        log_before,
        "nothing may reach the log"
    );
    assert_eq!(c.revision(leader), rev_before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_revision_waits_for_a_lagging_node_then_answers() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    namespace(&c, leader, "prod").await;
    c.isolate(f);
    let (s, w) = c
        .put(leader, "/v1/namespaces/prod/flags/late", bool_flag("on"))
        .await;
    assert_eq!(s, 200, "{w}");
    let rev = w["revision"].as_u64().unwrap();
    assert!(c.revision(f) < rev);

    // Cut off, the follower cannot reach the revision: a bounded wait, then 503.
    let path = format!("/v1/namespaces/prod/flags/late?consistency=bounded&min_revision={rev}");
    let (s, b) = c.get(f, &path).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "STALE_REPLICA");

    // Healed while the read waits: it answers with the write.
    let reader = {
        let url = format!("{}{path}", c.node(f).api);
        let http = c.http.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    c.heal();
    let got = reader.await.unwrap();
    assert_eq!(got["version"].as_u64(), Some(rev), "{got}");
    c.shutdown().await;
}

/// Shared by the follower and old-leader partition tests: reads bounded answers from `target`
/// while writes go to the majority, then checks each answer against the writes.
async fn bounded_reads_under_partition(c: &TestCluster, target: u64, majority_node: u64) {
    let bound_ms = 500u64;
    let start = Instant::now();
    let mut acked: Vec<(Duration, u64)> = Vec::new(); // (ack time, revision)
    let mut answers: Vec<(Duration, u64, u64)> = Vec::new(); // (invoke, staleness, revision)
    let mut refused_after = None;
    let mut i = 0;
    // Bounded: at most 5,000 rounds and 20 s; stops after three refusals in a row.
    let mut refusals_in_a_row = 0;
    while i < 5000 && start.elapsed() < Duration::from_secs(20) && refusals_in_a_row < 3 {
        i += 1;
        let (s, w) = c
            .put(
                majority_node,
                &format!("/v1/namespaces/prod/flags/f{i}"),
                bool_flag("on"),
            )
            .await;
        if s == 200 {
            acked.push((start.elapsed(), w["revision"].as_u64().unwrap()));
        }
        let invoke = start.elapsed();
        let (s, b, h) = c
            .request(
                target,
                Method::GET,
                &format!(
                    "/v1/namespaces/prod/flags?consistency=bounded&max_staleness_ms={bound_ms}"
                ),
                None,
            )
            .await;
        match s {
            200 => {
                let staleness: u64 = h["flagstaff-staleness-ms"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let revision: u64 = h["flagstaff-revision"].to_str().unwrap().parse().unwrap();
                assert!(
                    staleness <= bound_ms,
                    "staleness {staleness} over the bound"
                );
                answers.push((invoke, staleness, revision));
                refusals_in_a_row = 0;
            }
            503 => {
                assert_eq!(b["error"]["code"], "STALE_REPLICA", "{b}");
                refused_after.get_or_insert(invoke);
                refusals_in_a_row += 1;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(
        refused_after.is_some(),
        "the cut-off node kept answering bounded reads"
    );
    // Every answer reflects every write acknowledged before invoke - staleness.
    for (invoke, staleness, revision) in &answers {
        let cutoff = invoke.saturating_sub(Duration::from_millis(*staleness));
        for (ack, rev) in &acked {
            if *ack < cutoff {
                assert!(rev <= revision, "answer at {invoke:?} (staleness {staleness} ms, revision {revision}) misses write {rev} acked at {ack:?}");
            }
        }
    }
    // And it stopped within the bound (plus the read timeout of this harness).
    let last_ok = answers.last().map(|a| a.0).unwrap_or_default();
    assert!(
        last_ok <= Duration::from_millis(bound_ms + 2000),
        "answered at {last_ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_follower_stops_bounded_reads_with_true_staleness() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    namespace(&c, leader, "prod").await;
    c.isolate(f);
    bounded_reads_under_partition(&c, f, leader).await;
    // Healed, it proves its bound again.
    c.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = c
            .get(f, "/v1/namespaces/prod/flags?consistency=bounded")
            .await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "follower never recovered");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_leader_in_a_minority_stops_serving_reads() {
    let c = TestCluster::start(3, defaults).await;
    let old = c.wait_leader().await;
    namespace(&c, old, "prod").await;
    c.isolate(old);
    let rest: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = c.wait_leader_among(&rest).await;
    assert_ne!(new, old);
    bounded_reads_under_partition(&c, old, new).await;
    let (s, b) = c
        .get(old, "/v1/namespaces/prod/flags?consistency=linearizable")
        .await;
    assert_eq!(s, 503, "{b}");
    c.heal();
    c.shutdown().await;
}

fn small_snapshots(cfg: &mut NodeConfig) {
    cfg.snapshot_every = 20;
    cfg.logs_behind_snapshot = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_follower_catches_up_through_a_snapshot() {
    let c = TestCluster::start(3, small_snapshots).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    namespace(&c, leader, "prod").await;
    c.isolate(f);
    for i in 0..60 {
        let (s, b) = c
            .put(
                leader,
                &format!("/v1/namespaces/prod/flags/f{i}"),
                bool_flag(if i % 2 == 0 { "on" } else { "off" }),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b, _) = c
        .request(leader, Method::DELETE, "/v1/namespaces/prod/flags/f3", None)
        .await;
    assert_eq!(s, 200, "{b}");
    let target = c.revision(leader);
    let leader_metrics = c
        .node(leader)
        .running
        .as_ref()
        .unwrap()
        .node
        .raft
        .metrics()
        .borrow()
        .clone();
    assert!(
        leader_metrics.purged.is_some(),
        "the leader should have purged logs behind a snapshot"
    );
    let epoch_before = c
        .node(f)
        .running
        .as_ref()
        .unwrap()
        .node
        .state
        .applied()
        .snapshot_epoch;
    c.heal();
    let (s, got) = c
        .get(
            f,
            &format!("/v1/namespaces/prod/flags?consistency=bounded&min_revision={target}"),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    let (_, want) = c.get(leader, "/v1/namespaces/prod/flags").await;
    assert_eq!(got["flags"], want["flags"]);
    assert_eq!(got["flags"].as_array().unwrap().len(), 59);
    let epoch_after = c
        .node(f)
        .running
        .as_ref()
        .unwrap()
        .node
        .state
        .applied()
        .snapshot_epoch;
    assert!(
        epoch_after > epoch_before,
        "the follower should have installed a snapshot"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_rejoins_from_its_data_dir() {
    let mut c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    namespace(&c, leader, "prod").await;
    c.put(leader, "/v1/namespaces/prod/flags/before", bool_flag("on"))
        .await;
    c.stop(f).await;
    let (s, w) = c
        .put(leader, "/v1/namespaces/prod/flags/during", bool_flag("off"))
        .await;
    assert_eq!(s, 200);
    c.restart(f).await;
    let rev = w["revision"].as_u64().unwrap();
    let (s, got) = c
        .get(
            f,
            &format!("/v1/namespaces/prod/flags?consistency=bounded&min_revision={rev}"),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    let keys: Vec<&str> = got["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["before", "during"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_added_at_runtime_catches_up_and_serves_reads() {
    let mut c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    namespace(&c, leader, "prod").await;
    c.put(leader, "/v1/namespaces/prod/flags/a", bool_flag("on"))
        .await;
    c.add_node(4).await;
    let (s, b) = c.post(2, "/v1/cluster/learners", c.member_json(4)).await;
    assert_eq!(s, 200, "{b}");
    let (s, w) = c
        .put(leader, "/v1/namespaces/prod/flags/b", bool_flag("off"))
        .await;
    assert_eq!(s, 200);
    let rev = w["revision"].as_u64().unwrap();
    let (s, got) = c
        .get(
            4,
            &format!("/v1/namespaces/prod/flags?consistency=bounded&min_revision={rev}"),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["flags"].as_array().unwrap().len(), 2);
    let (_, status) = c.get(1, "/v1/cluster").await;
    let roles: Vec<(u64, String)> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&(4, "learner".to_string())), "{status}");
    // Promote once caught up; then it votes.
    let (s, b) = c.post(1, "/v1/cluster/voters", json!({"id": 4})).await;
    assert_eq!(s, 200, "{b}");
    c.shutdown().await;
}

#[tokio::test]
async fn a_pristine_data_dir_without_a_cluster_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = NodeConfig::new(
        1,
        tmp.path().join("n1"),
        "http://127.0.0.1:1".into(),
        "http://127.0.0.1:2".into(),
    );
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = flagstaff_node::start(cfg, client, peer)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_leader_hands_its_leadership_to_a_caught_up_voter_and_no_write_fails() {
    use flagstaff_node::hand_over::HandOver;
    use flagstaff_node::peer::ElectRequest;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    namespace(&c, leader, "prod").await;
    let node = c.node(leader).running.as_ref().unwrap().node.clone();
    let term = node.raft.metrics().borrow().current_term;

    // One writer through the leader, before, during and after the hand-over: a write that
    // meets the closed gate waits, then goes to the new leader.
    let handed = AtomicBool::new(false);
    let writes = async {
        let mut revisions = Vec::new();
        let mut after = 0;
        for i in 0..5_000 {
            if handed.load(Ordering::Relaxed) {
                after += 1;
                if after > 5 {
                    break;
                }
            }
            let path = format!("/v1/namespaces/prod/flags/w{i}");
            let (s, w) = c.put(leader, &path, bool_flag("on")).await;
            assert_eq!(s, 200, "write w{i}: {w}");
            revisions.push(w["revision"].as_u64().unwrap());
        }
        revisions
    };
    let hand_over = async {
        let outcome = node.hand_over(Duration::from_secs(5)).await;
        handed.store(true, Ordering::Relaxed);
        outcome
    };
    let (revisions, outcome) = tokio::join!(writes, hand_over);

    let HandOver::HandedTo(to) = outcome else {
        panic!("leadership was not handed over: {outcome:?}");
    };
    assert_ne!(to, leader);
    assert!(revisions.len() > 5, "{} writes", revisions.len());
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions out of order: {revisions:?}"
    );
    // The old leader follows the voter it asked, one term on: the voter won its first campaign.
    let m = node.raft.metrics().borrow().clone();
    assert_eq!(m.current_leader, Some(to));
    assert_eq!(m.current_term, term + 1);
    assert_eq!(c.wait_leader().await, to);
    // A follower has nothing to hand over.
    assert_eq!(
        node.hand_over(Duration::from_secs(5)).await,
        HandOver::NotLeader
    );
    // An ask to campaign that comes late (the term it names is over) or to the leader itself
    // moves nothing.
    let ask = |term| ElectRequest {
        term,
        last_log_index: 0,
    };
    let third = (1..=3).find(|id| *id != leader && *id != to).unwrap();
    for (id, term, why) in [
        (third, term, "asked in term"),
        (to, term + 1, "leads already"),
    ] {
        let n = c.node(id).running.as_ref().unwrap().node.clone();
        let refused = n.campaign(ask(term)).await;
        assert!(
            refused.as_ref().is_err_and(|r| r.to_string().contains(why)),
            "node {id}: {refused:?}"
        );
    }
    assert_eq!(c.wait_leader().await, to);

    c.stop(leader).await;
    let (s, w) = c
        .put(to, "/v1/namespaces/prod/flags/after", bool_flag("on"))
        .await;
    assert_eq!(s, 200, "{w}");
    assert!(w["revision"].as_u64().unwrap() > *revisions.last().unwrap());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ask_to_campaign_needs_the_cluster_secret_and_a_well_formed_body() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);
    let url = format!(
        "{}/raft/elect",
        c.member_json(follower)["peer_addr"].as_str().unwrap()
    );
    let http = reqwest::Client::new();
    let ask = |secret: &str, body: &'static [u8]| {
        http.post(&url)
            .bearer_auth(secret)
            .header("flagstaff-cluster", "test-cluster")
            .body(body)
            .send()
    };
    let r = ask("not-the-secret", b"").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = ask(common::SECRET, b"\xff\xff\xff").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("undecodable peer request"));
    // Neither moved the leadership.
    assert_eq!(c.wait_leader().await, leader);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_hands_nothing_over_and_says_why() {
    use flagstaff_node::hand_over::HandOver;

    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    c.isolate(leader);
    let node = c.node(leader).running.as_ref().unwrap().node.clone();
    // Given ten seconds, it gives up as soon as no quorum has answered for an election timeout.
    let outcome = node.hand_over(Duration::from_secs(10)).await;
    assert!(
        matches!(&outcome, HandOver::Failed(why) if why.contains("no quorum")),
        "{outcome:?}"
    );
    c.heal();
    c.shutdown().await;
}
