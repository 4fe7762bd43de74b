//! The SDK against real `flagstaff serve` processes, signalled only by the PIDs this test
//! spawned: `kill -9` of nodes one by one while the application evaluates in a loop, write →
//! SDK latency in steady state and across leader failovers, a change written during a failover
//! arriving exactly once, the whole cluster gone (`STALE`, last values kept), restarts of the
//! application from the LKG file, the bootstrap file and the call-site default; a SIGSTOPped
//! node and a node partitioned from the majority, detected and left.
//!
//! Harness: `jepsen_like_tests::cluster` (node N on 127.0.0.(40+N), a TCP proxy the test owns
//! in front of every peer listener, so a partition really drops peer traffic). The binary is
//! `$FLAGSTAFF_BIN`, or `flagstaff` in the target dir of this test executable, built there by
//! the test when it is missing (`common::flagstaff_bin`).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bool_flag, flagstaff_bin, wait_until, Evaluator};
use flagstaff_client::{context, Client, ErrorCode, Event, LoadOutcome, Reason, Source, Status};
use jepsen_like_tests::cluster::{Cluster, Health, ADMIN_TOKEN};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(2500);
const STALE_AFTER: Duration = Duration::from_secs(3);

/// A running 3-node cluster with namespace `checkout` (flag `f`, off) and an SDK key for it.
struct Fixture {
    c: Cluster,
    key: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // Proof rounds every ~500 ms, so a cut-off node stops proving its bound within ~1 s.
        let env = vec![("FLAGSTAFF_MAX_STALENESS_MS".to_string(), "1000".to_string())];
        let opts = jepsen_like_tests::cluster::NodeOptions {
            env,
            args: Vec::new(),
            ..Default::default()
        };
        let c = Cluster::start(&flagstaff_bin(), dir.path(), 3, 0, opts)
            .await
            .unwrap_or_else(|e| panic!("starting 3 flagstaff processes: {e:#}"));
        let admin = |method, path: &'static str, body: Value| {
            let c = &c;
            async move {
                let (s, b) = c
                    .call(1, method, path, Some(body))
                    .await
                    .unwrap_or_else(|e| panic!("{path}: {e:#}"));
                assert_eq!(s, 200, "{path}: {b}");
                b
            }
        };
        admin(reqwest::Method::PUT, "/v1/namespaces/checkout", json!({})).await;
        admin(
            reqwest::Method::PUT,
            "/v1/namespaces/checkout/flags/f",
            bool_flag("off"),
        )
        .await;
        let key = admin(
            reqwest::Method::POST,
            "/v1/namespaces/checkout/sdk-keys",
            json!({"name": "web"}),
        )
        .await["secret"]
            .as_str()
            .unwrap()
            .to_string();
        let f = Fixture { c, key, _dir: dir };
        // Every node knows the key before the application starts.
        for n in &f.c.nodes {
            let url = format!("{}/v1/namespaces/checkout/snapshot", n.api);
            let deadline = Instant::now() + LONG;
            loop {
                let r = f.c.http.get(&url).bearer_auth(&f.key).send().await;
                if r.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} never served the key",
                    n.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        f
    }

    fn endpoints(&self) -> Vec<String> {
        self.c.nodes.iter().map(|n| n.api.clone()).collect()
    }

    fn api(&self, id: u64) -> String {
        self.c.node(id).api.clone()
    }

    /// Running nodes other than `except`.
    fn running(&self, except: &[u64]) -> Vec<u64> {
        self.c
            .nodes
            .iter()
            .filter(|n| n.health == Health::Running && !except.contains(&n.id))
            .map(|n| n.id)
            .collect()
    }

    /// One write through the nodes `via` in turn, retried with the same `Idempotency-Key`
    /// (1 s per attempt) until a node acknowledges it; returns the revision.
    async fn write(&self, via: &[u64], method: reqwest::Method, path: &str, body: Value) -> u64 {
        assert!(!via.is_empty());
        let key = format!("w-{:016x}", rand::random::<u64>());
        let deadline = Instant::now() + LONG;
        let mut attempt = 0;
        loop {
            let id = via[attempt % via.len()];
            attempt += 1;
            let resp = self
                .c
                .http
                .request(method.clone(), format!("{}{path}", self.api(id)))
                .bearer_auth(ADMIN_TOKEN)
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(1))
                .json(&body)
                .send()
                .await;
            let last = match resp {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap();
                    return v["revision"].as_u64().unwrap();
                }
                Ok(r) => format!("node {id}: {}", r.status()),
                Err(e) => format!("node {id}: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "write {path} never acknowledged: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn set_f(&self, via: &[u64], on: bool) -> u64 {
        let patch = json!({"defaultVariant": if on { "on" } else { "off" }});
        self.write(
            via,
            reqwest::Method::PATCH,
            "/v1/namespaces/checkout/flags/f",
            patch,
        )
        .await
    }

    async fn wait_leader(&self) -> u64 {
        let running = self.running(&[]);
        self.c
            .wait_leader(&running, LONG)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// Every event the client emitted, with when.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<(Instant, Event)>>>);

impl Timeline {
    fn listener(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e| log.lock().unwrap().push((Instant::now(), e.clone()))
    }

    fn all(&self) -> Vec<(Instant, Event)> {
        self.0.lock().unwrap().clone()
    }

    /// When data at `revision` or later was first installed.
    fn installed(&self, revision: u64) -> Option<Instant> {
        self.all().into_iter().find_map(|(t, e)| match e {
            Event::ConfigurationChanged {
                revision: Some(r), ..
            } if r >= revision => Some(t),
            _ => None,
        })
    }

    /// Every revision installed, in order.
    fn revisions(&self) -> Vec<u64> {
        self.all()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::ConfigurationChanged { revision, .. } => revision,
                _ => None,
            })
            .collect()
    }

    /// Errors reported for `endpoint` after `since`.
    fn errors_from(&self, endpoint: &str, since: Instant) -> Vec<(Instant, String)> {
        self.all()
            .into_iter()
            .filter_map(|(t, e)| match e {
                Event::Error {
                    endpoint: Some(ep),
                    message,
                    ..
                } if t >= since && ep == endpoint => Some((t, message)),
                _ => None,
            })
            .collect()
    }
}

/// Waits until the client installed `revision` (or a later one); returns how long after
/// `from` that was.
async fn arrival(client: &Client, tl: &Timeline, revision: u64, from: Instant) -> Duration {
    wait_until(&format!("revision {revision} in the SDK"), LONG, || {
        tl.installed(revision).is_some()
    })
    .await;
    assert!(client.revision() >= Some(revision));
    tl.installed(revision)
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(from))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99), v[v.len() - 1])
}

fn client(f: &Fixture, tl: &Timeline) -> flagstaff_client::ClientBuilder {
    Client::builder("checkout", f.key.as_str())
        .endpoints(f.endpoints())
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .request_timeout(Duration::from_secs(1))
        .stale_after(STALE_AFTER)
        .on_event(tl.listener())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_nodes_one_by_one_while_evaluating_then_stale_then_restart_from_lkg() {
    let mut f = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lkg_path = dir.path().join("checkout.lkg");
    let bootstrap_path = dir.path().join("flags.json");
    std::fs::write(
        &bootstrap_path,
        json!({"flags": {"f": bool_flag("on"), "shipped": bool_flag("on")}}).to_string(),
    )
    .unwrap();
    let tl = Timeline::default();
    let client = client(&f, &tl).lkg_file(&lkg_path).build().unwrap();
    client.wait_ready(LONG).await.unwrap();
    let ctx = context().with_targeting_key("user-1");
    let d = client.bool_details("f", &ctx, true);
    assert_eq!(
        (d.value, d.source, d.stale),
        (false, Source::Network, false)
    );
    let eval = Evaluator::start(client.clone(), "f");

    // Steady state: every write, one after the other, reaches the SDK by push.
    let mut on = false;
    let mut steady = Vec::new();
    for _ in 0..100 {
        on = !on;
        let t0 = Instant::now();
        let rev = f.set_f(&f.running(&[]), on).await;
        steady.push(arrival(&client, &tl, rev, t0).await);
    }
    assert_eq!(client.bool("f", &ctx, !on), on);

    // Leader failovers: kill -9 the leader, at once write a new flag through the survivors;
    // it reaches the SDK, exactly once; then the killed node restarts on its data.
    let mut failover = Vec::new();
    let created: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    for round in 0..3 {
        let leader = f.wait_leader().await;
        let flag = format!("failover-{round}");
        let seen = created.clone();
        client.on_flag_change(flag.clone(), ctx.clone(), move |c| {
            *seen.lock().unwrap().entry(c.key.clone()).or_default() += 1;
        });
        f.c.kill(leader).await;
        let killed = Instant::now();
        let rev = f
            .write(
                &f.running(&[]),
                reqwest::Method::PUT,
                &format!("/v1/namespaces/checkout/flags/{flag}"),
                bool_flag("on"),
            )
            .await;
        failover.push(arrival(&client, &tl, rev, killed).await);
        assert!(client.bool(&flag, &ctx, false));
        f.c.restart(leader)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        f.wait_leader().await;
    }
    // Each was applied once by the cluster, whatever the retries during the failover.
    for round in 0..3 {
        let path = format!("/v1/namespaces/checkout/history?key=failover-{round}");
        let (status, page) =
            f.c.call(f.wait_leader().await, reqwest::Method::GET, &path, None)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(status, 200, "{page}");
        let changes = page["changes"].as_array().map_or(0, Vec::len);
        assert_eq!(changes, 1, "failover-{round} in the history: {page}");
    }

    // Now one by one, until none is left. While a majority is up, writes still arrive.
    let order = {
        let leader = f.wait_leader().await;
        let mut o: Vec<u64> = f.running(&[leader]);
        o.push(leader);
        o
    };
    f.c.kill(order[0]).await;
    on = !on;
    let t0 = Instant::now();
    let rev = f.set_f(&f.running(&[]), on).await;
    let after_first_kill = arrival(&client, &tl, rev, t0).await;
    let held = client.revision().unwrap();
    wait_until("the LKG file at the held revision", LONG, || {
        flagstaff_client::lkg::read(
            &lkg_path,
            "checkout",
            &flagstaff_client::lkg::key_fingerprint(&f.key),
        )
        .ok()
        .flatten()
        .is_some_and(|l| l.revision == held)
    })
    .await;
    f.c.kill(order[1]).await;
    // The last node has no quorum: it stops proving its bound and the client hears so from it.
    let lone = f.api(order[2]);
    let lone_since = Instant::now();
    wait_until(
        "the client to hear from the node without quorum",
        LONG,
        || !tl.errors_from(&lone, lone_since).is_empty(),
    )
    .await;
    assert_eq!(client.bool("f", &ctx, !on), on);
    f.c.kill(order[2]).await;
    let all_down = Instant::now();
    wait_until("STALE with every node down", LONG, || {
        client.status() == Status::Stale
    })
    .await;
    let stale_after_all_down = all_down.elapsed();
    let d = client.bool_details("f", &ctx, !on);
    assert_eq!(
        (d.value, d.source, d.stale, d.revision),
        (on, Source::Network, true, Some(held))
    );
    assert!(d.age.unwrap() > STALE_AFTER, "{:?}", d.age);
    let (evaluations, bad, first_bad) = eval.finish();

    let (s50, s99, smax) = summary(steady.clone());
    let (f50, f99, fmax) = summary(failover.clone());
    eprintln!(
        "write -> SDK, steady state ({} writes): p50 {s50:?}, p99 {s99:?}, max {smax:?}",
        steady.len()
    );
    eprintln!(
        "write -> SDK across a leader kill -9 (from the kill; {} failovers): {failover:?}, p50 {f50:?}, p99 {f99:?}, max {fmax:?}",
        failover.len()
    );
    eprintln!("write -> SDK after a follower kill: {after_first_kill:?}");
    eprintln!(
        "STALE {stale_after_all_down:?} after the last node died (bound {STALE_AFTER:?}); {evaluations} evaluations, {bad} not from data"
    );
    assert_eq!(
        bad, 0,
        "an evaluation fell back to the default: {first_bad:?}"
    );
    assert!(
        evaluations > 1000,
        "the evaluating thread ran: {evaluations}"
    );
    // Generous bounds for a shared 2-core machine and a debug build (targets: 100 ms, 2 s).
    assert!(s99 < Duration::from_millis(500), "steady-state p99 {s99:?}");
    assert!(fmax < Duration::from_secs(4), "across failover {fmax:?}");
    assert!(after_first_kill < Duration::from_secs(4));

    // A change written during a failover arrived exactly once: one install, one listener call,
    // one change in the cluster's history.
    let revisions = tl.revisions();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions installed: {revisions:?}"
    );
    for round in 0..3 {
        let flag = format!("failover-{round}");
        let installs = tl
            .all()
            .iter()
            .filter(|(_, e)| matches!(e, Event::ConfigurationChanged { flags, .. } if flags.contains(&flag)))
            .count();
        assert_eq!(installs, 1, "{flag} installed {installs} times");
        assert_eq!(created.lock().unwrap().get(&flag), Some(&1), "{flag}");
    }

    // The application restarts with the cluster down: it starts from the LKG file.
    drop(client);
    let restarted = Client::builder("checkout", f.key.as_str())
        .endpoints(f.endpoints())
        .lkg_file(&lkg_path)
        .bootstrap_file(&bootstrap_path)
        .build()
        .unwrap();
    assert_eq!(
        restarted.startup_report().lkg,
        LoadOutcome::Loaded {
            revision: Some(held)
        }
    );
    let d = restarted.bool_details("f", &ctx, !on);
    assert_eq!(
        (d.value, d.source, d.revision),
        (on, Source::Lkg, Some(held))
    );
    assert!(
        !restarted.bool("shipped", &ctx, false),
        "LKG data, not bootstrap"
    );
    drop(restarted);

    // A corrupt LKG file is refused: the bootstrap file serves.
    let mut bytes = std::fs::read(&lkg_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&lkg_path, &bytes).unwrap();
    let from_bootstrap = Client::builder("checkout", f.key.as_str())
        .endpoints(f.endpoints())
        .lkg_file(&lkg_path)
        .bootstrap_file(&bootstrap_path)
        .build()
        .unwrap();
    assert!(matches!(
        from_bootstrap.startup_report().lkg,
        LoadOutcome::Rejected(_)
    ));
    let d = from_bootstrap.bool_details("shipped", &ctx, false);
    assert_eq!(
        (d.value, d.source, d.stale),
        (true, Source::Bootstrap, true)
    );
    drop(from_bootstrap);

    // No file, no bootstrap, no cluster: the call-site default.
    std::fs::remove_file(&lkg_path).unwrap();
    let bare = Client::builder("checkout", f.key.as_str())
        .endpoints(f.endpoints())
        .lkg_file(&lkg_path)
        .build()
        .unwrap();
    assert_eq!(bare.startup_report().lkg, LoadOutcome::Missing);
    let d = bare.bool_details("f", &ctx, true);
    assert_eq!(
        (d.value, d.reason, d.source, d.error.map(|e| e.code)),
        (
            true,
            Reason::Error,
            Source::Default,
            Some(ErrorCode::ProviderNotReady)
        )
    );
    f.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigstopped_node_serving_the_stream_is_detected_and_left() {
    let mut f = Fixture::start().await;
    let tl = Timeline::default();
    let client = client(&f, &tl).build().unwrap();
    client.wait_ready(LONG).await.unwrap();
    let eval = Evaluator::start(client.clone(), "f");
    let ctx = context();
    let mut on = false;
    let mut rounds = Vec::new();
    // SIGSTOP each node in turn: one of them carries the stream. Writes go through the others.
    for id in 1..=3u64 {
        f.wait_leader().await;
        f.c.pause(id, true);
        let paused = Instant::now();
        on = !on;
        let rev = f.set_f(&f.running(&[]), on).await;
        let arrived = arrival(&client, &tl, rev, paused).await;
        assert_eq!(client.bool("f", &ctx, !on), on);
        // Left because it went silent (not because it answered something).
        let left = tl
            .errors_from(&f.api(id), paused)
            .into_iter()
            .find(|(_, m)| m.contains("presumed dead"))
            .map(|(t, _)| t - paused);
        f.c.pause(id, false);
        rounds.push((id, arrived, left));
    }
    f.wait_leader().await;
    let (evaluations, bad, first_bad) = eval.finish();
    eprintln!(
        "SIGSTOP of each node in turn (node, write arrived after, stream left after): {rounds:?} \
         (heartbeat timeout {HEARTBEAT_TIMEOUT:?}); {evaluations} evaluations"
    );
    assert_eq!(bad, 0, "{first_bad:?}");
    assert!(
        rounds.iter().any(|r| r.2.is_some()),
        "the paused node serving the stream was never detected: {rounds:?}"
    );
    for (id, arrived, left) in &rounds {
        if let Some(left) = left {
            // Silence is counted from the last heartbeat, which came up to 1 s before the pause.
            assert!(
                *left < HEARTBEAT_TIMEOUT + Duration::from_secs(3),
                "node {id} left after {left:?}"
            );
        }
        assert!(
            *arrived < HEARTBEAT_TIMEOUT + Duration::from_secs(4),
            "write with node {id} paused arrived after {arrived:?}"
        );
    }
    f.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_partitioned_from_the_majority_is_left_and_never_rolls_back() {
    let mut f = Fixture::start().await;
    let tl = Timeline::default();
    let client = client(&f, &tl).build().unwrap();
    client.wait_ready(LONG).await.unwrap();
    let eval = Evaluator::start(client.clone(), "f");
    let ctx = context();
    let mut on = false;
    let mut rounds = Vec::new();
    for id in 1..=3u64 {
        f.wait_leader().await;
        let majority: Vec<u64> = f.running(&[id]);
        f.c.partition(&[vec![id], majority.clone()]);
        let cut = Instant::now();
        on = !on;
        let rev = f.set_f(&majority, on).await;
        let arrived = arrival(&client, &tl, rev, cut).await;
        assert_eq!(client.bool("f", &ctx, !on), on);
        // Whatever the cut-off node said, nothing older was taken.
        let held_before_heal = client.revision().unwrap();
        let left = tl
            .errors_from(&f.api(id), cut)
            .first()
            .map(|(t, m)| (*t - cut, m.clone()));
        f.c.heal();
        assert!(client.revision().unwrap() >= held_before_heal);
        rounds.push((id, arrived, left));
    }
    f.wait_leader().await;
    let (evaluations, bad, first_bad) = eval.finish();
    eprintln!(
        "each node partitioned from the majority in turn (node, write arrived after, left after / why): {rounds:?}; {evaluations} evaluations"
    );
    assert_eq!(bad, 0, "{first_bad:?}");
    let revisions = tl.revisions();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions installed: {revisions:?}"
    );
    assert!(
        rounds.iter().any(|r| r.2.is_some()),
        "the partitioned node serving the stream was never left: {rounds:?}"
    );
    for (id, arrived, _) in &rounds {
        assert!(
            *arrived < Duration::from_secs(6),
            "write with node {id} cut off arrived after {arrived:?}"
        );
    }
    f.c.stop().await;
}
