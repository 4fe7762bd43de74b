//! The SDK against a scripted node: push, pull fallback, dead streams, gaps, lagging and
//! foreign answers, garbage, staleness. Real nodes: see `real_cluster.rs`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_node::{FakeNode, SnapshotMode};
use common::{bool_flag, wait_until, Recorder};
use flagstaff_client::lkg::{self, LkgContents};
use flagstaff_client::{context, Client, ClientBuilder, Event, Reason, Source, Status};
use serde_json::json;

const SECS: Duration = Duration::from_secs(10);

fn builder(nodes: &[&FakeNode]) -> ClientBuilder {
    Client::builder("checkout", "key")
        .endpoints(nodes.iter().map(|n| n.url()))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .heartbeat_timeout(Duration::from_millis(800))
        .request_timeout(Duration::from_secs(2))
}

fn change(rev: u64, prev: u64, key: &str, def: serde_json::Value) -> String {
    let data = json!({"revision": rev, "prev_revision": prev,
                      "upserted": {"flags": {key: def}, "segments": {}},
                      "deleted": {"flags": [], "segments": []}});
    format!("event: change\nid: {rev}\ndata: {data}\n\n")
}

#[tokio::test]
async fn push_update_arrives_with_listeners_and_lkg_file() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("off")})).await;
    let dir = tempfile::tempdir().unwrap();
    let lkg_path = dir.path().join("checkout.lkg");
    let rec = Recorder::default();
    let client = builder(&[&node])
        .lkg_file(&lkg_path)
        .on_event(rec.listener())
        .build()
        .unwrap();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let c2 = changes.clone();
    client.on_flag_change("f", context(), move |c| c2.lock().unwrap().push(c.clone()));
    let sets = Arc::new(Mutex::new(Vec::new()));
    let s2 = sets.clone();
    client.on_change(move |s| s2.lock().unwrap().push(s.clone()));

    client.wait_ready(SECS).await.unwrap();
    let ctx = context();
    assert!(!client.bool("f", &ctx, true));
    wait_until("a watch stream", SECS, || node.watchers() > 0).await;

    node.state.lock().unwrap().revision = 7;
    node.send_raw(&change(7, 5, "f", bool_flag("on")));
    wait_until("the change to apply", SECS, || {
        client.bool("f", &ctx, false)
    })
    .await;
    let d = client.bool_details("f", &ctx, false);
    assert_eq!(
        (d.source, d.revision, d.stale),
        (Source::Network, Some(7), false)
    );
    assert!(d.age.unwrap() < Duration::from_secs(5));

    wait_until("the flag listener", SECS, || {
        changes.lock().unwrap().len() >= 2
    })
    .await;
    // First the initial data (nothing → false), then the change (false → true).
    let seen: Vec<_> = changes
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.old_value.clone(), c.new_value.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (None, Some(json!(false))),
            (Some(json!(false)), Some(json!(true)))
        ]
    );
    assert!(sets
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.new_revision == Some(7) && s.flags.len() == 1));
    assert!(rec.any(|e| matches!(e, Event::Ready { .. })));
    assert!(rec.any(|e| matches!(
        e,
        Event::ConfigurationChanged {
            revision: Some(7),
            ..
        }
    )));

    // The LKG file follows, and a restarted app with no cluster starts from it.
    wait_until("LKG at revision 7", SECS, || {
        lkg::read(&lkg_path, "checkout", &lkg::key_fingerprint("key"))
            .ok()
            .flatten()
            .is_some_and(|c| c.revision == 7)
    })
    .await;
    node.stop();
    drop(client);
    let restarted = Client::builder("checkout", "key")
        .endpoint(common::dead_endpoint())
        .lkg_file(&lkg_path)
        .build()
        .unwrap();
    let d = restarted.bool_details("f", &ctx, false);
    assert_eq!(
        (d.value, d.source, d.revision),
        (true, Source::Lkg, Some(7))
    );
}

#[tokio::test]
async fn duplicate_changes_are_dropped_and_a_gap_resyncs_from_a_snapshot() {
    let node = FakeNode::start(
        "c1",
        "checkout",
        5,
        json!({"f": bool_flag("off"), "g": bool_flag("off")}),
    )
    .await;
    let client = builder(&[&node]).build().unwrap();
    client.wait_ready(SECS).await.unwrap();
    wait_until("a watch stream", SECS, || node.watchers() > 0).await;
    let ctx = context();

    // Revision 9's previous change is 8, which never arrived: a gap.
    {
        let mut s = node.state.lock().unwrap();
        s.revision = 9;
        s.flags = json!({"f": bool_flag("on"), "g": bool_flag("on")});
    }
    node.send_raw(&change(9, 8, "g", bool_flag("on")));
    wait_until("resync to revision 9", SECS, || {
        client.revision() == Some(9)
    })
    .await;
    // The resync took the whole snapshot (f changed at 8), not just the change.
    assert!(client.bool("f", &ctx, false) && client.bool("g", &ctx, false));
    let pulls = node.state.lock().unwrap().snapshot_requests.clone();
    assert!(
        pulls.contains(&Some(5)),
        "resync asked for min_revision 5: {pulls:?}"
    );

    // A replayed older change is dropped.
    wait_until("a new stream", SECS, || node.watchers() > 0).await;
    node.send_raw(&change(8, 5, "f", bool_flag("off")));
    node.heartbeat();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(client.bool("f", &ctx, false));
    assert_eq!(client.revision(), Some(9));
}

#[tokio::test]
async fn a_silent_stream_is_detected_and_resumed_with_since() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("off")})).await;
    let client = builder(&[&node]).build().unwrap();
    client.wait_ready(SECS).await.unwrap();
    // No heartbeats: the stream is presumed dead after 800 ms and reopened from revision 5.
    wait_until("a reconnect after silence", SECS, || {
        node.state
            .lock()
            .unwrap()
            .watch_requests
            .iter()
            .filter(|s| **s == Some(5))
            .count()
            >= 2
    })
    .await;
    assert!(client.metrics().reconnects >= 1);
    assert!(client.last_error().unwrap_or_default().contains("dead"));
}

#[tokio::test]
async fn a_node_without_a_stream_is_polled_with_if_none_match() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("off")})).await;
    node.state.lock().unwrap().watch = false;
    let client = builder(&[&node])
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    client.wait_ready(SECS).await.unwrap();
    wait_until("a few conditional polls", SECS, || {
        node.state
            .lock()
            .unwrap()
            .snapshot_requests
            .iter()
            .filter(|r| **r == Some(5))
            .count()
            >= 3
    })
    .await;
    {
        let mut s = node.state.lock().unwrap();
        s.revision = 6;
        s.flags = json!({"f": bool_flag("on")});
    }
    wait_until("the polled update", SECS, || {
        client.bool("f", &context(), false)
    })
    .await;
    assert_eq!(client.metrics().snapshots_accepted, 2);
}

#[tokio::test]
async fn a_lagging_node_never_rolls_the_app_back() {
    let ahead = FakeNode::start("c1", "checkout", 10, json!({"f": bool_flag("on")})).await;
    let behind = FakeNode::start("c1", "checkout", 4, json!({"f": bool_flag("off")})).await;
    // The lagging node ignores min_revision and answers its old state anyway.
    let old = behind.body().to_string().into_bytes();
    behind.state.lock().unwrap().snapshot = SnapshotMode::Raw(
        200,
        vec![
            ("flagstaff-cluster".into(), "c1".into()),
            ("flagstaff-staleness-ms".into(), "5".into()),
        ],
        old,
    );
    let rec = Recorder::default();
    let client = builder(&[&ahead, &behind])
        .on_event(rec.listener())
        .build()
        .unwrap();
    wait_until("revision 10", SECS, || client.revision() == Some(10)).await;
    let seen = rec.all().len();
    ahead.stop();
    let ctx = context();
    wait_until("the lagging node's answer refused", SECS, || {
        client.metrics().rollbacks_refused >= 2
    })
    .await;
    assert!(client.bool("f", &ctx, false));
    assert_eq!(client.revision(), Some(10));
    assert!(rec.any(|e| matches!(
        e,
        Event::RollbackRefused {
            held: 10,
            offered: 4,
            ..
        }
    )));
    // Nothing older was installed after revision 10 was held.
    assert!(!rec.all()[seen..]
        .iter()
        .any(|e| matches!(e, Event::ConfigurationChanged { .. })));
}

#[tokio::test]
async fn a_new_cluster_id_is_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkout.lkg");
    let contents = LkgContents {
        namespace: "checkout".into(),
        cluster_id: "old-cluster".into(),
        key_fingerprint: lkg::key_fingerprint("key"),
        revision: 500,
        fetched_at_unix_ms: 1,
        data_as_of_unix_ms: None,
        flags: BTreeMap::from([("f".to_string(), bool_flag("off"))]),
        segments: BTreeMap::new(),
    };
    lkg::write_atomic(&path, &lkg::encode(&contents).unwrap()).unwrap();
    let node = FakeNode::start(
        "rebuilt-cluster",
        "checkout",
        3,
        json!({"f": bool_flag("on")}),
    )
    .await;
    let rec = Recorder::default();
    let client = builder(&[&node])
        .lkg_file(&path)
        .on_event(rec.listener())
        .build()
        .unwrap();
    assert_eq!(client.revision(), Some(500));
    client.wait_ready(SECS).await.unwrap();
    assert_eq!(client.revision(), Some(3));
    assert_eq!(client.cluster_id().as_deref(), Some("rebuilt-cluster"));
    assert!(client.bool("f", &context(), false));
    assert!(rec.any(|e| matches!(e, Event::ClusterChanged { new, .. } if new == "rebuilt-cluster")));
}

#[tokio::test]
async fn staleness_is_flagged_when_the_cluster_becomes_unreachable() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let rec = Recorder::default();
    let client = builder(&[&node])
        .stale_after(Duration::from_millis(700))
        .heartbeat_timeout(Duration::from_secs(5))
        .on_event(rec.listener())
        .build()
        .unwrap();
    client.wait_ready(SECS).await.unwrap();
    wait_until("a watch stream", SECS, || node.watchers() > 0).await;
    // Heartbeats keep it fresh well past the bound…
    for _ in 0..15 {
        node.heartbeat();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.status(), Status::Ready);
    assert!(!client.bool_details("f", &context(), false).stale);
    // …then the cluster goes away.
    node.stop();
    wait_until("STALE", SECS, || client.status() == Status::Stale).await;
    let d = client.bool_details("f", &context(), false);
    assert!(
        d.value && d.stale,
        "values keep coming from the last good state"
    );
    assert_eq!(d.reason, Reason::Static, "the reason stays what it was");
    assert!(d.age.unwrap() > Duration::from_millis(700));
    assert!(rec.any(|e| matches!(e, Event::Stale { .. })));
    assert!(client.metrics().stale_transitions >= 1);
}

#[tokio::test]
async fn a_node_that_reports_stale_is_left_for_another() {
    let a = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let b = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let client = builder(&[&a, &b]).build().unwrap();
    client.wait_ready(SECS).await.unwrap();
    wait_until("a watch stream", SECS, || a.watchers() + b.watchers() > 0).await;
    let (on, other) = if a.watchers() > 0 { (&a, &b) } else { (&b, &a) };
    on.send_raw("event: stale\ndata: {\"revision\":5,\"message\":\"cut off\"}\n\n");
    wait_until("the other node's stream", SECS, || other.watchers() > 0).await;
    assert!(client.last_error().unwrap_or_default().contains("cut off"));
}

#[tokio::test]
async fn garbage_from_the_server_never_panics_or_regresses() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let client = builder(&[&node])
        .config({
            let mut c = flagstaff_client::Config::new("checkout", "key");
            c.endpoints = vec![node.url()];
            c.backoff_min = Duration::from_millis(5);
            c.backoff_max = Duration::from_millis(20);
            c.heartbeat_timeout = Duration::from_millis(300);
            c.limits.max_snapshot_bytes = 64 << 10;
            c
        })
        .build()
        .unwrap();
    client.wait_ready(SECS).await.unwrap();
    let ctx = context();
    let h = |c: &str| vec![("flagstaff-cluster".to_string(), c.to_string())];
    type Raw = (u16, Vec<(String, String)>, Vec<u8>);
    let garbage: Vec<Raw> = vec![
        (200, h("c1"), b"\xff\xfe\x00garbage".to_vec()),
        (200, h("c1"), b"null".to_vec()),
        (
            200,
            h("c1"),
            br#"{"namespace":"checkout","cluster_id":"c1","revision":"x"}"#.to_vec(),
        ),
        (
            200,
            h("c1"),
            br#"{"namespace":"checkout","cluster_id":"c1","revision":1,"flags":{"f":false}}"#
                .to_vec(),
        ),
        (
            200,
            h("c1"),
            br#"{"namespace":"other","cluster_id":"c1","revision":99,"flags":{}}"#.to_vec(),
        ),
        (
            200,
            h("c2"),
            br#"{"namespace":"checkout","cluster_id":"c1","revision":99,"flags":{}}"#.to_vec(),
        ),
        (
            200,
            vec![("etag".into(), "\"12\"".into())],
            br#"{"namespace":"checkout","cluster_id":"c1","revision":99,"flags":{}}"#.to_vec(),
        ),
        (200, h("c1"), vec![b' '; 200 << 10]),
        (500, h("c1"), b"<html>oops</html>".to_vec()),
        (304, h("c1"), vec![]),
        (
            200,
            vec![("flagstaff-staleness-ms".into(), "-5".into())],
            b"{".to_vec(),
        ),
    ];
    for (i, g) in garbage.into_iter().enumerate() {
        let before = client.metrics().reconnects;
        node.state.lock().unwrap().snapshot = SnapshotMode::Raw(g.0, g.1, g.2);
        node.drop_streams();
        wait_until(&format!("garbage case {i} consumed"), SECS, || {
            client.metrics().reconnects > before + 1
        })
        .await;
        let d = client.bool_details("f", &ctx, false);
        assert!(d.value, "case {i}: value kept");
        assert_eq!(d.revision, Some(5), "case {i}: revision kept");
    }
    // Garbage inside a stream that otherwise works.
    node.state.lock().unwrap().snapshot = SnapshotMode::Normal;
    for (i, text) in [
        "event: change\ndata: {not json}\n\n",
        "event: change\ndata: {\"revision\":3,\"prev_revision\":1,\"upserted\":{\"flags\":{\"f\":{\"state\":\"ENABLED\",\"variants\":{\"on\":true,\"off\":false},\"defaultVariant\":\"off\"}}}}\n\n",
        "event: snapshot\ndata: {\"namespace\":\"checkout\",\"cluster_id\":\"c1\",\"revision\":2,\"flags\":{}}\n\n",
        "event: heartbeat\ndata: {\"revision\":1,\"staleness_ms\":0}\n\n",
        "event: heartbeat\ndata: [1,2]\n\n",
        "data: \u{0}\u{1}\n\nevent: mystery\ndata: 1\n\n",
        "event: change\ndata: null\n\n",
    ]
    .iter()
    .enumerate()
    {
        wait_until("a watch stream", SECS, || node.watchers() > 0).await;
        node.send_raw(text);
        node.send_raw(&"x".repeat(70 << 10)); // an over-long line ends it anyway
        node.drop_streams();
        let d = client.bool_details("f", &ctx, false);
        assert!(d.value, "stream case {i}: value kept");
        assert_eq!(d.revision, Some(5), "stream case {i}: revision kept");
    }
    assert!(client.metrics().malformed_responses >= 5);
    assert_eq!(client.revision(), Some(5));
}

mod arbitrary_responses {
    use super::*;
    use proptest::prelude::*;

    fn snapshot_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            (0u64..12, prop_oneof![Just("c1"), Just("c2")], any::<bool>(), any::<bool>()).prop_map(
                |(rev, cluster, on, other_ns)| {
                    json!({"namespace": if other_ns {"payments"} else {"checkout"}, "cluster_id": cluster,
                           "revision": rev, "flags": {"f": bool_flag(if on {"on"} else {"off"})}, "segments": {}})
                    .to_string()
                    .into_bytes()
                }
            ),
        ]
    }

    fn stream_text() -> impl Strategy<Value = String> {
        let event = prop_oneof![
            (0u64..12, 0u64..12, any::<bool>()).prop_map(|(r, p, on)| change(r, p, "f", bool_flag(if on { "on" } else { "off" }))),
            (0u64..12, 0u64..3000).prop_map(|(r, s)| format!("event: heartbeat\ndata: {{\"revision\":{r},\"staleness_ms\":{s}}}\n\n")),
            (0u64..12, prop_oneof![Just("c1"), Just("c2")]).prop_map(|(r, c)| format!(
                "event: snapshot\ndata: {}\n\n",
                json!({"namespace":"checkout","cluster_id":c,"revision":r,"flags":{"f": bool_flag("off")},"segments":{}})
            )),
            "[ -~\n]{0,60}".prop_map(|s| s),
        ];
        proptest::collection::vec(event, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a node answers — any status, headers from this or another cluster, any body,
        /// any stream — the client never panics, always evaluates, and never holds a lower
        /// revision of cluster c1 than the 5 it started with.
        #[test]
        fn never_panic_never_roll_back(
            status in prop::sample::select(vec![200u16, 200, 200, 304, 404, 500, 503]),
            cluster_header in prop_oneof![Just(None), Just(Some("c1")), Just(Some("c2"))],
            staleness in prop_oneof![Just(None), Just(Some("0")), Just(Some("-1")), Just(Some("x")), Just(Some("99999999999999999999"))],
            body in snapshot_body(),
            stream in stream_text(),
        ) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("checkout.lkg");
                let contents = LkgContents {
                    namespace: "checkout".into(),
                    cluster_id: "c1".into(),
                    key_fingerprint: lkg::key_fingerprint("key"),
                    revision: 5,
                    fetched_at_unix_ms: 1,
                    data_as_of_unix_ms: None,
                    flags: BTreeMap::from([("f".to_string(), bool_flag("on"))]),
                    segments: BTreeMap::new(),
                };
                lkg::write_atomic(&path, &lkg::encode(&contents).unwrap()).unwrap();
                let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
                let mut headers = Vec::new();
                if let Some(c) = cluster_header {
                    headers.push(("flagstaff-cluster".to_string(), c.to_string()));
                }
                if let Some(s) = staleness {
                    headers.push(("flagstaff-staleness-ms".to_string(), s.to_string()));
                }
                node.state.lock().unwrap().snapshot = SnapshotMode::Raw(status, headers, body);
                let client = Client::builder("checkout", "key")
                    .endpoint(node.url())
                    .lkg_file(&path)
                    .backoff(Duration::from_millis(5), Duration::from_millis(20))
                    .heartbeat_timeout(Duration::from_millis(100))
                    .build()
                    .unwrap();
                let ctx = context();
                let mut c1_revision = 5;
                // Expose the client to the node for a while, checking the invariant throughout.
                for _ in 0..30 {
                    if node.watchers() > 0 {
                        node.send_raw(&stream);
                        node.drop_streams();
                    }
                    let _ = client.bool_details("f", &ctx, false);
                    let _ = client.string("f", &ctx, "x");
                    if client.cluster_id().as_deref() == Some("c1") {
                        let r = client.revision().unwrap();
                        assert!(r >= c1_revision, "c1 went from {c1_revision} to {r}");
                        c1_revision = r;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                node.stop();
            });
        }
    }
}
