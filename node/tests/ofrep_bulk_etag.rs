//! OFREP bulk evaluation: the `ETag` covers the evaluation context as well as the namespace, so
//! a client that keeps its `If-None-Match` across a context change gets the new context's
//! answer, never a 304 with values evaluated for another context.

mod common;

use common::TestCluster;
use flagstaff_node::NodeConfig;
use serde_json::{json, Value};

fn defaults(_: &mut NodeConfig) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_etag_depends_on_the_context() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let (s, b) = c.put(leader, "/v1/namespaces/web", json!({})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/web/flags/staff-banner",
            json!({"state": "ENABLED", "variants": {"staff": "hi staff", "other": "hello"}, "defaultVariant": "other",
                "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "staff", "other"]}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .post(
            leader,
            "/v1/namespaces/web/sdk-keys",
            json!({"name": "web"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let key = b["secret"].as_str().unwrap().to_string();
    let rev = b["revision"].as_u64().unwrap();
    let follower = c.follower_of(leader);

    let bulk = |body: String, etag: Option<String>, rev: u64| {
        let mut r = c
            .http
            .post(format!(
                "{}/ofrep/v1/evaluate/flags?min_revision={rev}",
                c.node(follower).api
            ))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body);
        if let Some(e) = etag {
            r = r.header("If-None-Match", e);
        }
        r.send()
    };
    let banner = |b: &Value| {
        b["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == "staff-banner")
            .unwrap()["value"]
            .clone()
    };

    let r = bulk(
        r#"{"context":{"targetingKey":"u1","email":"a@other.org"}}"#.into(),
        None,
        rev,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(banner(&r.json().await.unwrap()), "hello");

    // The same context, keys in another order: unchanged.
    let r = bulk(
        r#"{"context":{"email":"a@other.org","targetingKey":"u1"}}"#.into(),
        Some(etag.clone()),
        rev,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);

    // Same targeting key, another attribute: a fresh answer for the new context.
    let r = bulk(
        r#"{"context":{"targetingKey":"u1","email":"a@example.com"}}"#.into(),
        Some(etag.clone()),
        rev,
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a changed context must not be answered 304"
    );
    let staff_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(staff_etag, etag);
    assert_eq!(banner(&r.json().await.unwrap()), "hi staff");

    // No context and an empty one are the same context.
    let r = bulk("{}".into(), None, rev).await.unwrap();
    let empty_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(
        bulk(r#"{"context":{}}"#.into(), Some(empty_etag), rev)
            .await
            .unwrap()
            .status(),
        304
    );

    // A write changes every tag.
    let (s, b, _) = c
        .request(
            leader,
            reqwest::Method::PATCH,
            "/v1/namespaces/web/flags/staff-banner",
            Some(json!({"variants": {"other": "hello again"}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let written = b["revision"].as_u64().unwrap();
    let r = bulk(
        r#"{"context":{"targetingKey":"u1","email":"a@other.org"}}"#.into(),
        Some(etag),
        written,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "a write must invalidate the ETag");
    assert_eq!(banner(&r.json().await.unwrap()), "hello again");
    c.shutdown().await;
}
