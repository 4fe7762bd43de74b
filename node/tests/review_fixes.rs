//! Fixes from review, each with the test that caught it:
//!
//! 1. A keyed `PATCH` without `If-Match` that meets a concurrent change retries under its own
//!    idempotency scope per attempt, so the retry is not answered with the first attempt's
//!    412; the client's key still means "applied at most once".

mod common;

use std::sync::Arc;

use common::{bool_flag, TestCluster, TOKEN};
use flagstaff_node::NodeConfig;
use reqwest::Method;
use serde_json::{json, Value};

fn defaults(_: &mut NodeConfig) {}

async fn patch(c: &TestCluster, node: u64, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = c
        .http
        .patch(format!("{}{path}", c.node(node).api))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("patch");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every retained change of flag `key` in `ns`, newest first (one page is enough here).
async fn flag_history(c: &TestCluster, node: u64, ns: &str, key: &str) -> Vec<Value> {
    let (s, h) = c
        .get(
            node,
            &format!("/v1/namespaces/{ns}/history?key={key}&limit=1000"),
        )
        .await;
    assert_eq!(s, 200, "{h}");
    h["changes"].as_array().unwrap().clone()
}

// ----- 1. keyed PATCH under concurrent changes -----

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_keyed_patches_of_one_flag_each_apply_once() {
    // A patch only fails an attempt when another one applied between its read and its
    // proposal, so with as many patches as a PATCH has attempts (5), each succeeds.
    const PATCHES: usize = 5;
    let c = Arc::new(TestCluster::start(3, defaults).await);
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "prod").await;
    let path = "/v1/namespaces/prod/flags/f";
    let (s, b) = c.put(leader, path, bool_flag("on")).await;
    assert_eq!(s, 200, "{b}");

    // All patches are released at once against the same version: all but one of the first
    // round of proposals meet a changed version and must retry.
    let start = Arc::new(tokio::sync::Barrier::new(PATCHES));
    let tasks: Vec<_> = (0..PATCHES)
        .map(|i| {
            let (c, start) = (c.clone(), start.clone());
            tokio::spawn(async move {
                let body = json!({"metadata": {format!("p{i}"): format!("v{i}")}});
                // Half through a follower (forwarded writes), half through the leader.
                let node = if i % 2 == 0 {
                    leader
                } else {
                    c.follower_of(leader)
                };
                start.wait().await;
                let (s, b) = patch(&c, node, path, &format!("patch-{i}"), &body).await;
                (i, node, body, s, b)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let mut revisions: Vec<u64> = Vec::new();
    for (i, _, _, s, b) in &answers {
        assert_eq!(*s, 200, "patch {i}: {b}");
        assert_eq!(b["version"], b["revision"], "patch {i}: {b}");
        revisions.push(b["revision"].as_u64().unwrap());
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), PATCHES, "one revision per patch");

    // Every patch is in the flag, and each was applied exactly once.
    let (s, got) = c.get(leader, path).await;
    assert_eq!(s, 200, "{got}");
    for i in 0..PATCHES {
        assert_eq!(
            got["definition"]["metadata"][format!("p{i}")],
            format!("v{i}"),
            "{got}"
        );
    }
    let history = flag_history(&c, leader, "prod", "f").await;
    assert_eq!(
        history.len(),
        PATCHES + 1,
        "the create and one change per patch"
    );

    // A client retry of a successful keyed PATCH gets the recorded answer, on any node, and
    // makes no new revision.
    let revision_before = c.revision(leader);
    for (i, node, body, _, first) in &answers {
        let other = if *node == leader {
            c.follower_of(leader)
        } else {
            leader
        };
        for via in [*node, other] {
            let (s, again) = patch(&c, via, path, &format!("patch-{i}"), body).await;
            assert_eq!(s, 200, "replay of patch {i}: {again}");
            assert_eq!(&again, first, "replay of patch {i}");
        }
    }
    let (_, after) = c.get(leader, path).await;
    assert_eq!(
        after["version"], got["version"],
        "a replay changed the flag"
    );
    assert_eq!(
        c.revision(leader),
        revision_before,
        "a replay made a revision"
    );
    assert_eq!(
        flag_history(&c, leader, "prod", "f").await.len(),
        PATCHES + 1
    );

    // The same key with another body is another request.
    let (s, b) = patch(&c, leader, path, "patch-0", &json!({"state": "DISABLED"})).await;
    assert_eq!(s, 422, "{b}");
    Arc::try_unwrap(c).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_patch_replayed_after_the_flag_is_gone_returns_its_recorded_success() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    c.create_namespace(leader, "prod").await;
    let path = "/v1/namespaces/prod/flags/kill";
    let (s, b) = c.put(leader, path, bool_flag("on")).await;
    assert_eq!(s, 200, "{b}");
    let off = json!({"state": "DISABLED"});
    let (s, first) = patch(&c, f, path, "kill-1", &off).await;
    assert_eq!(s, 200, "{first}");

    // The flag is deleted after the patch applied; the client, which lost the answer, retries.
    let (s, b, _) = c.request(leader, Method::DELETE, path, None).await;
    assert_eq!(s, 200, "{b}");
    let revision = c.revision(leader);
    for via in [f, leader] {
        let (s, again) = patch(&c, via, path, "kill-1", &off).await;
        assert_eq!(s, 200, "{again}");
        assert_eq!(again, first);
    }
    assert_eq!(c.revision(leader), revision);
    let (s, _) = c.get(leader, path).await;
    assert_eq!(s, 404, "the replay must not re-create the flag");

    // A new key on the deleted flag is a new PATCH: 404.
    let (s, b) = patch(&c, f, path, "kill-2", &off).await;
    assert_eq!(s, 404, "{b}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_on_patches_with_different_preconditions_is_refused() {
    let c = TestCluster::start(1, defaults).await;
    c.create_namespace(1, "prod").await;
    let path = "/v1/namespaces/prod/flags/f";
    let (s, b) = c.put(1, path, bool_flag("on")).await;
    assert_eq!(s, 200, "{b}");
    let current = b["version"].as_u64().unwrap();
    let off = json!({"state": "DISABLED"});
    let url = format!("{}{path}", c.node(1).api);
    // A stale If-Match: 412, recorded under the key.
    let r = c
        .http
        .patch(&url)
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", "k")
        .header("If-Match", format!("\"{}\"", current + 100))
        .json(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    // The same again: the recorded 412.
    let r = c
        .http
        .patch(&url)
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", "k")
        .header("If-Match", format!("\"{}\"", current + 100))
        .json(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    // Without If-Match it is another request: neither applied nor answered with the 412.
    let (s, b) = patch(&c, 1, path, "k", &off).await;
    assert_eq!(s, 422, "{b}");
    let (_, got) = c.get(1, path).await;
    assert_eq!(got["version"].as_u64(), Some(current));
    assert_eq!(got["definition"]["state"], "ENABLED");
    c.shutdown().await;
}
