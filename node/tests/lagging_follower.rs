//! A follower that was down while many concurrent writes were batched into large log entries
//! catches up when it returns: the leader's appends to it (hundreds of entries in one request)
//! are not refused by the peer listener's body limit.

mod common;

use std::time::Duration;

use common::{TestCluster, TOKEN};
use flagstaff_node::NodeConfig;
use serde_json::json;

fn defaults(_: &mut NodeConfig) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_catches_up_after_large_batched_entries() {
    let mut c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "lag").await;
    let down = c.follower_of(leader);
    c.stop(down).await;

    // 64 concurrent writers with 2 KiB descriptions: the proposer batches them, so each log
    // entry is tens of KiB and a few hundred entries exceed axum's 2 MB default body limit.
    let api = c.node(leader).api.clone();
    let description = "x".repeat(2048);
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (http, api, description) = (c.http.clone(), api.clone(), description.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let r = http
                    .put(format!("{api}/v1/namespaces/lag/flags/f{w}-{i}"))
                    .bearer_auth(TOKEN)
                    .json(
                        &json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "on", "description": description}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "write: {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let target = c.revision(leader);

    c.restart(down).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.revision(down) < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower {down} stuck at revision {} of {target} (log index {} of {})",
            c.revision(down),
            c.last_log_index(down),
            c.last_log_index(leader)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}
