//! Evaluation before, and without, any network: call-site defaults, bootstrap document, LKG
//! file (and its refusal when corrupt or foreign).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{bool_flag, dead_endpoint, Recorder};
use flagstaff_client::lkg::{self, LkgContents};
use flagstaff_client::{context, Client, ErrorCode, Event, LoadOutcome, Reason, Source, Status};
use serde_json::json;

fn write_lkg(path: &std::path::Path, ns: &str, key: &str, cluster: &str, revision: u64, on: bool) {
    let contents = LkgContents {
        namespace: ns.into(),
        cluster_id: cluster.into(),
        key_fingerprint: lkg::key_fingerprint(key),
        revision,
        fetched_at_unix_ms: 1,
        data_as_of_unix_ms: Some(1),
        flags: BTreeMap::from([
            (
                "new-checkout".to_string(),
                bool_flag(if on { "on" } else { "off" }),
            ),
            (
                "limits".to_string(),
                json!({"state":"ENABLED","variants":{"v":{"max":7}},"defaultVariant":"v"}),
            ),
        ]),
        segments: BTreeMap::new(),
    };
    lkg::write_atomic(path, &lkg::encode(&contents).unwrap()).unwrap();
}

fn bootstrap() -> serde_json::Value {
    json!({"flags": {
        "new-checkout": bool_flag("on"),
        "greeting": {"state":"ENABLED","variants":{"a":"hello","b":"hi"},"defaultVariant":"b"},
        "ratio": {"state":"ENABLED","variants":{"a":0.25},"defaultVariant":"a"},
        "limit": {"state":"ENABLED","variants":{"a":12},"defaultVariant":"a"}
    }})
}

#[tokio::test]
async fn no_data_anywhere_gives_the_call_site_default_at_once() {
    let started = Instant::now();
    let client = Client::builder("checkout", "key")
        .endpoint(dead_endpoint())
        .build()
        .unwrap();
    // Construction does not wait for the (unreachable) cluster.
    assert!(started.elapsed() < Duration::from_secs(1));
    let ctx = context();
    assert!(client.bool("new-checkout", &ctx, true));
    assert_eq!(client.string("x", &ctx, "dflt"), "dflt");
    assert_eq!(client.i64("x", &ctx, 9), 9);
    let d = client.bool_details("new-checkout", &ctx, true);
    assert!(d.value);
    assert_eq!(d.reason, Reason::Error);
    assert_eq!(d.error.map(|e| e.code), Some(ErrorCode::ProviderNotReady));
    assert_eq!(d.source, Source::Default);
    assert_eq!(client.status(), Status::NotReady);
    assert_eq!(
        client.wait_ready(Duration::from_millis(200)).await,
        Err(Status::NotReady)
    );
}

#[tokio::test]
async fn bootstrap_document_serves_before_any_network_and_is_marked_stale() {
    let client = Client::builder("checkout", "key")
        .endpoint(dead_endpoint())
        .bootstrap_document(bootstrap())
        .build()
        .unwrap();
    let ctx = context();
    let d = client.bool_details("new-checkout", &ctx, false);
    assert!(d.value);
    assert_eq!(d.reason, Reason::Static);
    assert_eq!(
        (d.source, d.revision, d.age, d.stale),
        (Source::Bootstrap, None, None, true)
    );
    assert_eq!(client.string("greeting", &ctx, "x"), "hi");
    assert_eq!(client.f64("ratio", &ctx, 0.0), 0.25);
    assert_eq!(client.i64("limit", &ctx, 0), 12);
    // Wrong type and unknown key: the caller's default, reason ERROR, an error code.
    let wrong = client.i64_details("greeting", &ctx, 5);
    assert_eq!(
        (wrong.value, wrong.reason, wrong.source),
        (5, Reason::Error, Source::Default)
    );
    assert_eq!(wrong.error.map(|e| e.code), Some(ErrorCode::TypeMismatch));
    let missing = client.string_details("nope", &ctx, "d");
    assert_eq!(missing.error.map(|e| e.code), Some(ErrorCode::FlagNotFound));
    assert_eq!(client.status(), Status::Stale);
    assert_eq!(
        client.startup_report().bootstrap,
        LoadOutcome::Loaded { revision: None }
    );
}

#[tokio::test]
async fn bootstrap_file_is_read_and_a_broken_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, bootstrap().to_string()).unwrap();
    let client = Client::builder("checkout", "key")
        .bootstrap_file(&path)
        .build()
        .unwrap();
    assert!(client.bool("new-checkout", &context(), false));

    std::fs::write(&path, b"{\"flags\": {\"a\": ").unwrap();
    let rec = Recorder::default();
    let client = Client::builder("checkout", "key")
        .bootstrap_file(&path)
        .on_event(rec.listener())
        .build()
        .unwrap();
    assert!(!client.bool("new-checkout", &context(), false));
    assert!(matches!(
        client.startup_report().bootstrap,
        LoadOutcome::Rejected(_)
    ));
    assert!(rec.any(|e| matches!(e, Event::BootstrapProblem { .. })));
}

#[tokio::test]
async fn lkg_file_wins_over_bootstrap_and_a_corrupt_one_falls_back_to_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkout.lkg");
    write_lkg(&path, "checkout", "key", "c1", 41, false);

    let client = Client::builder("checkout", "key")
        .endpoint(dead_endpoint())
        .lkg_file(&path)
        .bootstrap_document(bootstrap())
        .build()
        .unwrap();
    let ctx = context();
    let d = client.bool_details("new-checkout", &ctx, true);
    assert_eq!(
        (d.value, d.source, d.revision),
        (false, Source::Lkg, Some(41))
    );
    // Written "at" 1970: its proven age is huge, so it is stale, and says so.
    assert!(d.stale && d.age.unwrap() > Duration::from_secs(3600));
    assert_eq!(client.object("limits", &ctx, &json!({})), json!({"max": 7}));
    assert_eq!(
        client.startup_report().lkg,
        LoadOutcome::Loaded { revision: Some(41) }
    );
    drop(client);

    // Flip one byte in the body: refused, reported, bootstrap used instead.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let rec = Recorder::default();
    let client = Client::builder("checkout", "key")
        .lkg_file(&path)
        .bootstrap_document(bootstrap())
        .on_event(rec.listener())
        .build()
        .unwrap();
    let d = client.bool_details("new-checkout", &ctx, false);
    assert_eq!((d.value, d.source), (true, Source::Bootstrap));
    assert!(
        matches!(client.startup_report().lkg, LoadOutcome::Rejected(ref m) if m.contains("checksum"))
    );
    assert!(rec.any(|e| matches!(e, Event::LkgProblem { .. })));

    // Truncated: same.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let client = Client::builder("checkout", "key")
        .lkg_file(&path)
        .build()
        .unwrap();
    assert!(matches!(
        client.startup_report().lkg,
        LoadOutcome::Rejected(_)
    ));
    assert_eq!(
        client.bool_details("new-checkout", &ctx, true).source,
        Source::Default
    );
}

#[tokio::test]
async fn lkg_file_of_another_namespace_or_key_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.lkg");
    write_lkg(&path, "payments", "key", "c1", 41, false);
    let client = Client::builder("checkout", "key")
        .lkg_file(&path)
        .build()
        .unwrap();
    assert!(
        matches!(client.startup_report().lkg, LoadOutcome::Rejected(ref m) if m.contains("namespace"))
    );
    assert!(client.bool("new-checkout", &context(), true));

    write_lkg(&path, "checkout", "other-key", "c1", 41, false);
    let client = Client::builder("checkout", "key")
        .lkg_file(&path)
        .build()
        .unwrap();
    assert!(
        matches!(client.startup_report().lkg, LoadOutcome::Rejected(ref m) if m.contains("key"))
    );
}

#[test]
fn works_without_a_tokio_runtime() {
    let client = Client::builder("checkout", "key")
        .endpoint(dead_endpoint())
        .bootstrap_document(bootstrap())
        .build()
        .unwrap();
    assert!(client.bool("new-checkout", &context(), false));
    assert_eq!(
        client.wait_ready_blocking(Duration::from_millis(100)),
        Err(Status::Stale)
    );
    client.close();
}

#[test]
fn invalid_configuration_is_refused() {
    assert!(Client::builder("", "key").build().is_err());
    assert!(Client::builder("ns", "key")
        .endpoint("not a url")
        .build()
        .is_err());
    assert!(Client::builder("ns", "key")
        .endpoint("ftp://x")
        .build()
        .is_err());
}

#[tokio::test]
async fn absurd_durations_do_not_panic_anything() {
    let client = Client::builder("checkout", "key")
        .endpoint(dead_endpoint())
        .bootstrap_document(bootstrap())
        .stale_after(Duration::MAX)
        .heartbeat_timeout(Duration::MAX)
        .poll_interval(Duration::MAX)
        .backoff(Duration::MAX, Duration::MAX)
        .request_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert!(client.bool("new-checkout", &context(), false));
    assert!(client.wait_ready(Duration::from_millis(50)).await.is_err());
    assert!(client
        .wait_ready_blocking(Duration::from_millis(1))
        .is_err());
}

#[tokio::test]
async fn an_lkg_file_claiming_a_future_proof_is_taken_as_of_unknown_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkout.lkg");
    let mut contents = LkgContents {
        namespace: "checkout".into(),
        cluster_id: "c1".into(),
        key_fingerprint: lkg::key_fingerprint("key"),
        revision: 3,
        fetched_at_unix_ms: u64::MAX,
        data_as_of_unix_ms: Some(u64::MAX / 2),
        flags: BTreeMap::from([("f".to_string(), bool_flag("on"))]),
        segments: BTreeMap::new(),
    };
    lkg::write_atomic(&path, &lkg::encode(&contents).unwrap()).unwrap();
    let client = Client::builder("checkout", "key")
        .lkg_file(&path)
        .build()
        .unwrap();
    let d = client.bool_details("f", &context(), false);
    assert_eq!(
        (d.value, d.source, d.age, d.stale),
        (true, Source::Lkg, None, true)
    );
    assert_eq!(client.status(), Status::Stale);

    // A file written a moment ago is fresh.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    contents.data_as_of_unix_ms = Some(now);
    lkg::write_atomic(&path, &lkg::encode(&contents).unwrap()).unwrap();
    let client = Client::builder("checkout", "key")
        .lkg_file(&path)
        .build()
        .unwrap();
    let d = client.bool_details("f", &context(), false);
    assert!(!d.stale && d.age.unwrap() < Duration::from_secs(5));
    assert_eq!(client.status(), Status::Ready);
}
