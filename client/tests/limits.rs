//! The SDK protects its host: whatever a node or a file sends, the client holds bounded data,
//! never hangs on it, and a hostile definition degrades only the flags it touches.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::fake_node::{FakeNode, SnapshotMode};
use common::{bool_flag, wait_until, Recorder};
use flagstaff_client::lkg::{self, LkgContents};
use flagstaff_client::{
    context, Client, ClientBuilder, ErrorCode, Event, Limits, LoadOutcome, Reason, Source,
};
use serde_json::json;

const SECS: Duration = Duration::from_secs(10);

fn small() -> Limits {
    Limits {
        max_snapshot_bytes: 64 << 10,
        ..Limits::default()
    }
}

fn builder(node: &FakeNode, limits: Limits) -> ClientBuilder {
    Client::builder("checkout", "key")
        .endpoint(node.url())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .heartbeat_timeout(Duration::from_millis(800))
        .request_timeout(Duration::from_secs(2))
        .limits(limits)
}

fn last_error_has(client: &Client, text: &str) -> bool {
    client.last_error().is_some_and(|e| e.contains(text))
}

fn snapshot_requests(node: &FakeNode) -> usize {
    node.state.lock().unwrap().snapshot_requests.len()
}

fn watch_requests(node: &FakeNode) -> usize {
    node.state.lock().unwrap().watch_requests.len()
}

#[tokio::test]
async fn an_oversized_snapshot_body_is_refused_while_it_streams_in() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let client = builder(&node, small())
        // Only the size limit can end an endless body before this.
        .request_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    client.wait_ready(SECS).await.unwrap();

    // A body that never ends: abandoned at the limit, long before the request's timeout.
    node.state.lock().unwrap().snapshot = SnapshotMode::Endless;
    node.drop_streams();
    wait_until("the endless body refused at the limit", SECS, || {
        last_error_has(&client, "larger than 65536 bytes")
    })
    .await;
    assert!(client.metrics().limits_exceeded >= 1);
    let d = client.bool_details("f", &context(), false);
    assert_eq!((d.value, d.revision), (true, Some(5)));

    // A valid snapshot at a newer revision, padded past the limit (JSON allows trailing
    // whitespace): refused too, the data held is kept.
    let mut body = json!({"namespace": "checkout", "cluster_id": "c1", "revision": 6,
                          "flags": {"f": bool_flag("off")}, "segments": {}})
    .to_string()
    .into_bytes();
    body.resize(body.len() + (70 << 10), b' ');
    let headers = vec![
        ("flagstaff-cluster".to_string(), "c1".to_string()),
        ("etag".to_string(), "\"6\"".to_string()),
    ];
    node.state.lock().unwrap().snapshot = SnapshotMode::Raw(200, headers, body);
    let n = snapshot_requests(&node);
    // Sessions run one after another: once request n+1 is made, request n was answered with
    // the padded body and fully handled.
    wait_until("a padded snapshot handled", SECS, || {
        snapshot_requests(&node) >= n + 2
    })
    .await;
    let d = client.bool_details("f", &context(), false);
    assert_eq!(
        (d.value, d.revision),
        (true, Some(5)),
        "padded snapshot refused"
    );
    assert!(last_error_has(&client, "larger than 65536 bytes"));

    // The same body within the default limits is an ordinary snapshot: accepted.
    let roomy = builder(&node, Limits::default()).build().unwrap();
    wait_until("the padded snapshot accepted", SECS, || {
        roomy.revision() == Some(6)
    })
    .await;
    assert!(!roomy.bool("f", &context(), true));
    assert_eq!(roomy.metrics().limits_exceeded, 0);
}

#[tokio::test]
async fn an_oversized_stream_line_or_event_is_refused_and_the_stream_reconnects() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let client = builder(&node, small()).build().unwrap();
    client.wait_ready(SECS).await.unwrap();
    let long_line = format!("event: change\ndata: {}", "x".repeat(100 << 10));
    let many_lines = format!(
        "event: change\n{}",
        format!("data: {}\n", "y".repeat(1000)).repeat(100)
    );
    for (i, (what, payload)) in [("line", long_line), ("event", many_lines)]
        .into_iter()
        .enumerate()
    {
        wait_until("a watch stream", SECS, || node.watchers() > 0).await;
        let before = watch_requests(&node);
        let refused = client.metrics().limits_exceeded;
        assert!(node.send_raw(&payload) > 0);
        wait_until(&format!("the oversized {what} refused"), SECS, || {
            client.metrics().limits_exceeded > refused
        })
        .await;
        assert!(
            last_error_has(&client, "larger than 65536 bytes"),
            "{:?}",
            client.last_error()
        );
        wait_until(
            &format!("a new stream after the oversized {what}"),
            SECS,
            || watch_requests(&node) > before && node.watchers() > 0,
        )
        .await;
        assert_eq!(client.revision(), Some(5 + 2 * i as u64));
        // The new stream delivers.
        let (prev, rev) = (5 + 2 * i as u64, 7 + 2 * i as u64);
        let on = i % 2 == 1;
        {
            let mut s = node.state.lock().unwrap();
            s.revision = rev;
            s.flags = json!({"f": bool_flag(if on { "on" } else { "off" })});
        }
        let data = json!({"revision": rev, "prev_revision": prev,
                          "upserted": {"flags": {"f": bool_flag(if on { "on" } else { "off" })}}});
        node.send_raw(&format!("event: change\ndata: {data}\n\n"));
        wait_until("the next change", SECS, || client.revision() == Some(rev)).await;
        assert_eq!(client.bool("f", &context(), !on), on);
    }
}

#[tokio::test]
async fn too_many_flags_are_refused_and_the_data_held_is_kept() {
    let two = json!({"a": bool_flag("on"), "b": bool_flag("on")});
    let node = FakeNode::start("c1", "checkout", 5, two).await;
    let limits = Limits {
        max_flags: 3,
        ..Limits::default()
    };
    let client = builder(&node, limits).build().unwrap();
    client.wait_ready(SECS).await.unwrap();
    wait_until("a watch stream", SECS, || node.watchers() > 0).await;

    // A change that would make four flags.
    let data = json!({"revision": 6, "prev_revision": 5,
                      "upserted": {"flags": {"c": bool_flag("on"), "d": bool_flag("on")}}});
    node.send_raw(&format!("event: change\ndata: {data}\n\n"));
    wait_until("the change refused", SECS, || {
        last_error_has(&client, "4 flags, more than the limit of 3")
    })
    .await;
    assert_eq!(client.revision(), Some(5));
    assert_eq!(
        client
            .bool_details("c", &context(), false)
            .error
            .map(|e| e.code),
        Some(ErrorCode::FlagNotFound)
    );

    // A snapshot with five.
    {
        let mut s = node.state.lock().unwrap();
        s.revision = 8;
        s.flags = (0..5)
            .map(|i| (format!("f{i}"), bool_flag("on")))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    node.drop_streams();
    wait_until("the snapshot refused", SECS, || {
        last_error_has(&client, "5 flags, more than the limit of 3")
    })
    .await;
    assert_eq!(client.revision(), Some(5));
    assert!(client.bool("a", &context(), false));
    assert!(client.metrics().limits_exceeded >= 2);
}

#[tokio::test]
async fn hostile_definitions_degrade_only_the_flags_they_touch() {
    let flags = json!({
        "greeting": {"state": "ENABLED", "variants": {"a": "hello", "b": "hi"}, "defaultVariant": "b"},
        "limit": {"state": "ENABLED", "variants": {"a": 12}, "defaultVariant": "a"},
        "on": bool_flag("on"),
        "no-such-variant": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"},
        "not-an-object": 42,
        "missing-segment": {"state": "ENABLED", "variants": {"on": true, "off": false},
                            "defaultVariant": "off", "targeting": {"if": [{"$ref": "nobody"}, "on", "off"]}},
        "huge": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
                 "metadata": {"pad": "z".repeat(20 << 10)}}
    });
    let node = FakeNode::start("c1", "checkout", 5, flags).await;
    let dir = tempfile::tempdir().unwrap();
    let lkg_path = dir.path().join("checkout.lkg");
    let limits = Limits {
        max_definition_bytes: 8 << 10,
        ..Limits::default()
    };
    let client = builder(&node, limits).lkg_file(&lkg_path).build().unwrap();
    client.wait_ready(SECS).await.unwrap();

    let check = |client: &Client, source: Source| {
        let ctx = context().with_targeting_key("u1");
        let g = client.string_details("greeting", &ctx, "dflt");
        assert_eq!(
            (g.value.as_str(), g.reason, g.source),
            ("hi", Reason::Static, source)
        );
        assert_eq!(client.i64("limit", &ctx, -1), 12);
        assert!(client.bool("on", &ctx, false));
        for key in [
            "no-such-variant",
            "not-an-object",
            "missing-segment",
            "huge",
        ] {
            let d = client.bool_details(key, &ctx, false);
            assert_eq!(
                (d.value, d.reason, d.source, d.error.map(|e| e.code)),
                (
                    false,
                    Reason::Error,
                    Source::Default,
                    Some(ErrorCode::ParseError)
                ),
                "{key}"
            );
        }
    };
    check(&client, Source::Network);
    assert_eq!(client.metrics().limits_exceeded, 1, "the huge definition");
    assert!(last_error_has(&client, "flags.huge"));

    // Kept in the LKG file as they are, they degrade the same flags after a restart.
    wait_until("the LKG file", SECS, || {
        lkg::read(&lkg_path, "checkout", &lkg::key_fingerprint("key"))
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    node.stop();
    drop(client);
    let restarted = Client::builder("checkout", "key")
        .endpoint(common::dead_endpoint())
        .lkg_file(&lkg_path)
        .limits(limits)
        .build()
        .unwrap();
    assert_eq!(
        restarted.startup_report().lkg,
        LoadOutcome::Loaded { revision: Some(5) }
    );
    check(&restarted, Source::Lkg);
}

fn write_lkg(path: &std::path::Path, n_flags: usize) {
    let contents = LkgContents {
        namespace: "checkout".into(),
        cluster_id: "c1".into(),
        key_fingerprint: lkg::key_fingerprint("key"),
        revision: 9,
        fetched_at_unix_ms: 1,
        data_as_of_unix_ms: None,
        flags: (0..n_flags)
            .map(|i| (format!("f{i}"), bool_flag("on")))
            .collect(),
        segments: BTreeMap::new(),
    };
    lkg::write_atomic(path, &lkg::encode(&contents).unwrap()).unwrap();
}

/// Makes `path` 1 GiB long (sparse): reading it whole would take 16 times the limit in memory.
fn make_huge(path: &std::path::Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
}

#[tokio::test]
async fn oversized_bootstrap_and_lkg_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("flags.json");
    std::fs::write(
        &boot,
        json!({"flags": {"f0": bool_flag("off")}}).to_string(),
    )
    .unwrap();
    let lkg_path = dir.path().join("checkout.lkg");
    write_lkg(&lkg_path, 2);

    // Both fine: the LKG file wins.
    let client = Client::builder("checkout", "key")
        .lkg_file(&lkg_path)
        .bootstrap_file(&boot)
        .build()
        .unwrap();
    assert_eq!(client.source(), Source::Lkg);

    // Both 1 GiB: both refused at once, with the reason; the call-site default serves.
    make_huge(&boot);
    make_huge(&lkg_path);
    let rec = Recorder::default();
    let started = Instant::now();
    let client = Client::builder("checkout", "key")
        .lkg_file(&lkg_path)
        .bootstrap_file(&boot)
        .on_event(rec.listener())
        .build()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let report = client.startup_report();
    let limit = Limits::default().max_lkg_file_bytes();
    assert!(
        matches!(&report.lkg, LoadOutcome::Rejected(m) if m.contains(&format!("larger than the limit of {limit} bytes"))),
        "{report:?}"
    );
    assert!(
        matches!(&report.bootstrap, LoadOutcome::Rejected(m) if m.contains(&format!("larger than the limit of {} bytes", 64 << 20))),
        "{report:?}"
    );
    assert!(rec.any(|e| matches!(e, Event::LkgProblem { .. })));
    assert!(rec.any(|e| matches!(e, Event::BootstrapProblem { .. })));
    assert_eq!(client.metrics().limits_exceeded, 2);
    assert_eq!(client.source(), Source::Default);

    // A well-formed LKG file with more flags than allowed is refused; the bootstrap document
    // given in code is used instead.
    write_lkg(&lkg_path, 3);
    let client = Client::builder("checkout", "key")
        .lkg_file(&lkg_path)
        .bootstrap_document(json!({"flags": {"f0": bool_flag("off")}}))
        .limits(Limits {
            max_flags: 2,
            ..Limits::default()
        })
        .build()
        .unwrap();
    assert!(
        matches!(&client.startup_report().lkg, LoadOutcome::Rejected(m) if m.contains("3 flags, more than the limit of 2")),
        "{:?}",
        client.startup_report()
    );
    assert_eq!(client.source(), Source::Bootstrap);
    assert!(!client.bool("f0", &context(), true));
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_as_files_never_block_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opening a FIFO plainly blocks until a writer comes: build on a thread, and fail the
    // test if it does not return.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let client = Client::builder("checkout", "key")
            .lkg_file(&path)
            .bootstrap_file("/dev/zero")
            .build()
            .unwrap();
        let _ = tx.send(client.startup_report().clone());
    });
    let report = rx.recv_timeout(SECS).expect("build blocked on a FIFO");
    assert!(
        matches!(&report.lkg, LoadOutcome::Rejected(m) if m.contains("not a regular file")),
        "{report:?}"
    );
    assert!(
        matches!(&report.bootstrap, LoadOutcome::Rejected(m) if m.contains("not a regular file")),
        "{report:?}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_lkg_file_the_client_writes_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkout.lkg");
    // A file left readable by everyone (and unusable) is replaced by a private one.
    std::fs::write(&path, b"not an lkg file").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let client = builder(&node, Limits::default())
        .lkg_file(&path)
        .build()
        .unwrap();
    assert!(matches!(
        client.startup_report().lkg,
        LoadOutcome::Rejected(_)
    ));
    wait_until("the LKG file written", SECS, || {
        client.metrics().lkg_writes >= 1
    })
    .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    assert!(lkg::read(&path, "checkout", &lkg::key_fingerprint("key"))
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_stream_of_unknown_events_alone_is_as_good_as_silent() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let client = builder(&node, Limits::default()).build().unwrap();
    client.wait_ready(SECS).await.unwrap();
    wait_until("a watch stream", SECS, || node.watchers() > 0).await;
    let before = watch_requests(&node);
    // Every 100 ms an event no client version knows, and never a heartbeat: the stream must
    // be left after the heartbeat timeout (800 ms).
    let deadline = Instant::now() + SECS;
    while watch_requests(&node) == before {
        assert!(
            Instant::now() < deadline,
            "a stream sending only unknown events was never left"
        );
        node.send_raw("event: mystery\ndata: {}\n\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last_error_has(&client, "no event for"),
        "{:?}",
        client.last_error()
    );
    assert_eq!(client.revision(), Some(5));
}

#[tokio::test]
async fn stalled_responses_end_in_a_timeout_not_a_hang() {
    let node = FakeNode::start("c1", "checkout", 5, json!({"f": bool_flag("on")})).await;
    let client = builder(&node, Limits::default())
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    client.wait_ready(SECS).await.unwrap();

    // A snapshot whose body stops after one byte, the connection held open.
    node.state.lock().unwrap().snapshot = SnapshotMode::Stall;
    node.drop_streams();
    wait_until("the stalled snapshot timed out", SECS, || {
        last_error_has(&client, "timed out")
    })
    .await;
    let n = snapshot_requests(&node);
    wait_until("the next attempt", SECS, || snapshot_requests(&node) > n).await;

    // A stream request answered 500 whose error body stalls.
    {
        let mut s = node.state.lock().unwrap();
        s.snapshot = SnapshotMode::Normal;
        s.watch_stalled_error = true;
    }
    let w = watch_requests(&node);
    wait_until("the stalled stream error given up", SECS, || {
        watch_requests(&node) >= w + 2 && last_error_has(&client, "HTTP 500")
    })
    .await;
    let d = client.bool_details("f", &context(), false);
    assert_eq!((d.value, d.revision), (true, Some(5)));
}

#[test]
fn limits_are_checked_by_the_builder() {
    let zero = Limits {
        max_snapshot_bytes: 0,
        ..Limits::default()
    };
    assert!(Client::builder("checkout", "key")
        .limits(zero)
        .build()
        .is_err());
    let d = Limits::default();
    assert_eq!(
        (
            d.max_snapshot_bytes,
            d.max_flags,
            d.max_segments,
            d.max_definition_bytes
        ),
        (64 << 20, 10_000, 10_000, 1 << 20)
    );
}

#[test]
fn an_evaluation_context_over_the_limit_answers_invalid_context() {
    let client = Client::builder("checkout", "key")
        .bootstrap_document(json!({"flags": {"f": bool_flag("on")}}))
        .limits(Limits {
            max_context_bytes: 1024,
            ..Limits::default()
        })
        .build()
        .unwrap();
    let small = context()
        .with_targeting_key("u")
        .with_attribute("pad", "x".repeat(900));
    let d = client.bool_details("f", &small, false);
    assert_eq!((d.value, d.reason), (true, Reason::Static), "{d:?}");
    let large = context()
        .with_targeting_key("u")
        .with_attribute("pad", "x".repeat(1100));
    let d = client.bool_details("f", &large, false);
    assert_eq!((d.value, d.reason), (false, Reason::Error), "{d:?}");
    let error = d.error.unwrap();
    assert_eq!(error.code, ErrorCode::InvalidContext);
    assert!(error.message.starts_with("context:"), "{error:?}");
    assert!(!client.bool("f", &large, false));
    assert_eq!(client.string("f", &large, "d"), "d");
    assert_eq!(client.object("f", &large, &json!(1)), json!(1));
    // Under the default limit (64 KiB) both evaluate.
    let client = Client::builder("checkout", "key")
        .bootstrap_document(json!({"flags": {"f": bool_flag("on")}}))
        .build()
        .unwrap();
    assert!(client.bool("f", &large, false));
}
