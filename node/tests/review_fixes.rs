//! Fixes from review, each with the test that caught it:
//!
//! 1. A keyed `PATCH` without `If-Match` that meets a concurrent change retries under its own
//!    idempotency scope per attempt, so the retry is not answered with the first attempt's
//!    412; the client's key still means "applied at most once".
//! 2. `POST /v1/cluster/learners` first makes the new member prove, without the cluster secret
//!    travelling, that it is a node of this cluster at the addresses given; nothing carrying
//!    the secret is sent to anything else.
//! 3. An admin token created through the API cannot take the name of a configured one.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bool_flag, TestCluster, SECRET, TOKEN};
use flagstaff_node::NodeConfig;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

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
    // A stale If-Match: 412, recorded under the key; the same again: the recorded 412.
    for attempt in ["first", "replay"] {
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
        assert_eq!(r.status(), 412, "{attempt}");
    }
    // Without If-Match it is another request: neither applied nor answered with the 412.
    let (s, b) = patch(&c, 1, path, "k", &off).await;
    assert_eq!(s, 422, "{b}");
    let (_, got) = c.get(1, path).await;
    assert_eq!(got["version"].as_u64(), Some(current));
    assert_eq!(got["definition"]["state"], "ENABLED");
    c.shutdown().await;
}

// ----- 2. a new learner proves it belongs before it gets the secret -----

/// A fake HTTP/1.1 server on 127.0.0.1 that records every request (head and body) and answers
/// each with `answer(request)`.
struct Recorder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    accept: AbortHandle,
}

impl Recorder {
    async fn start(answer: fn(&[u8]) -> (u16, Vec<u8>)) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let log = requests.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: the head, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let request: Vec<u8> = buf.drain(..head_end + len).collect();
                        let (status, body) = answer(&request);
                        log.lock().unwrap().push(request);
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        let mut out = resp.into_bytes();
                        out.extend_from_slice(&body);
                        if conn.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
        .abort_handle();
        Recorder {
            addr,
            requests,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Nothing this recorder received carries the cluster secret, in any header or the body.
fn assert_never_saw_the_secret(r: &Recorder) {
    let requests = r.requests();
    for req in &requests {
        let text = String::from_utf8_lossy(req);
        assert!(
            !contains(req, SECRET.as_bytes()),
            "a request carried the cluster secret: {text}"
        );
        assert!(
            !text.to_lowercase().contains("\r\nauthorization:"),
            "a request carried credentials: {text}"
        );
    }
}

fn members(status: &Value) -> Vec<u64> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

/// `POST /v1/cluster/learners` with `spec` is refused with 400 naming `field`, saying `why`.
async fn assert_refused_naming(c: &TestCluster, via: u64, spec: Value, field: &str, why: &str) {
    let (s, b) = c.post(via, "/v1/cluster/learners", spec.clone()).await;
    assert_eq!(s, 400, "{spec} -> {b}");
    assert_eq!(b["error"]["code"], "INVALID_ARGUMENT", "{b}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("{field}:")), "{message}");
    assert!(message.contains(why), "{message}");
    assert!(!message.contains("  "), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_address_that_is_not_a_node_of_this_cluster_never_gets_the_secret() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    // Answers everything with 200 and a body that is no peer answer.
    let plain = Recorder::start(|_| (200, b"ok".to_vec())).await;
    // Answers everything 401 like a peer listener refusing a wrong secret would.
    let refusing = Recorder::start(|_| (401, b"cluster secret missing or wrong".to_vec())).await;
    for (fake, via, why) in [
        (&plain, leader, "did not prove it is a node of this cluster"),
        (&plain, f, "did not prove it is a node of this cluster"),
        (&refusing, leader, "answered 401"),
    ] {
        let spec = json!({"id": 9, "api_addr": fake.url(), "peer_addr": fake.url()});
        assert_refused_naming(&c, via, spec, "peer_addr", why).await;
    }
    // An address where nothing listens.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let spec = json!({"id": 9, "api_addr": format!("http://{closed}"), "peer_addr": format!("http://{closed}")});
    assert_refused_naming(&c, leader, spec, "peer_addr", "did not prove").await;
    let spec = json!({"id": 9, "api_addr": "http://127.0.0.1:1", "peer_addr": "not a url"});
    assert_refused_naming(&c, leader, spec, "peer_addr", "did not prove").await;

    // Nothing changed, and the fakes were asked (so they would have seen a secret) but never
    // given it.
    let (_, status) = c.get(leader, "/v1/cluster").await;
    assert_eq!(members(&status), vec![1, 2, 3], "{status}");
    assert!(!plain.requests().is_empty() && !refusing.requests().is_empty());
    assert_never_saw_the_secret(&plain);
    assert_never_saw_the_secret(&refusing);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_impostor_echoing_this_clusters_identity_is_refused() {
    use flagstaff_node::peer::{IdentifyReply, IdentifyRequest};
    use flagstaff_raft_store::codec;

    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    // Knows the public facts (cluster id, the id and addresses it is added under) but not the
    // secret: its proof is made with a guess.
    let impostor = Recorder::start(|req| {
        let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let Ok(ask) = codec::decode::<IdentifyRequest>(&req[head_end..]) else {
            return (404, Vec::new());
        };
        let host = String::from_utf8_lossy(req)
            .lines()
            .find_map(|l| {
                l.to_lowercase()
                    .strip_prefix("host:")
                    .map(|h| h.trim().to_string())
            })
            .unwrap();
        let addr = format!("http://{host}");
        let reply = IdentifyReply {
            cluster_id: "test-cluster".into(),
            node_id: 9,
            api_addr: addr.clone(),
            peer_addr: addr.clone(),
            proof: flagstaff_node::peer::identity_proof(
                "a guessed secret",
                "test-cluster",
                9,
                &addr,
                &addr,
                &ask.nonce,
            )
            .to_vec(),
        };
        (200, codec::encode(&reply).unwrap())
    })
    .await;
    let spec = json!({"id": 9, "api_addr": impostor.url(), "peer_addr": impostor.url()});
    assert_refused_naming(&c, leader, spec, "peer_addr", "could not prove it holds").await;
    assert!(!impostor.requests().is_empty());
    assert_never_saw_the_secret(&impostor);
    let (_, status) = c.get(leader, "/v1/cluster").await;
    assert_eq!(members(&status), vec![1, 2, 3], "{status}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_new_node_is_added_only_under_its_own_id_and_addresses() {
    let mut c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    c.add_node(4).await;
    let genuine = c.member_json(4);
    let api = genuine["api_addr"].as_str().unwrap().to_string();
    let peer = genuine["peer_addr"].as_str().unwrap().to_string();

    // Another id than the node's own.
    assert_refused_naming(
        &c,
        leader,
        json!({"id": 5, "api_addr": api, "peer_addr": peer}),
        "peer_addr",
        "says it is node 4, not 5",
    )
    .await;
    // A relay at another address in front of the real node: the node's proof names its own
    // address, so the relay (which would receive the secret once added) is refused.
    let relay_target: SocketAddr = peer.trim_start_matches("http://").parse().unwrap();
    let relay = common::Proxy::start("127.0.0.1".parse().unwrap(), relay_target).await;
    assert_refused_naming(
        &c,
        leader,
        json!({"id": 4, "api_addr": api, "peer_addr": format!("http://{}", relay.listen)}),
        "peer_addr",
        "advertises its peer listener as",
    )
    .await;
    // The right peer address with someone else's client address.
    let fake_api = Recorder::start(|_| (200, b"ok".to_vec())).await;
    assert_refused_naming(
        &c,
        leader,
        json!({"id": 4, "api_addr": fake_api.url(), "peer_addr": peer}),
        "api_addr",
        "advertises its client listener as",
    )
    .await;
    assert!(
        fake_api.requests().is_empty(),
        "the client address is not probed"
    );
    let (_, status) = c.get(leader, "/v1/cluster").await;
    assert_eq!(members(&status), vec![1, 2, 3], "{status}");

    // The node as it is: added, through a follower too (relayed to the leader).
    let (s, b) = c
        .post(
            c.follower_of(leader),
            "/v1/cluster/learners",
            genuine.clone(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c.post(leader, "/v1/cluster/learners", genuine).await;
    assert_eq!(s, 409, "{b}");
    let (_, status) = c.get(leader, "/v1/cluster").await;
    assert_eq!(members(&status), vec![1, 2, 3, 4], "{status}");
    c.shutdown().await;
}

#[tokio::test]
async fn the_recorder_sees_a_secret_when_one_is_sent() {
    // The check above can fail: a request with the secret is caught.
    let r = Recorder::start(|_| (200, Vec::new())).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/raft/append", r.url()))
        .bearer_auth(SECRET)
        .body("x")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let caught = std::panic::catch_unwind(|| assert_never_saw_the_secret(&r));
    assert!(caught.is_err());
}

// ----- 3. API admin tokens and configured names -----

fn with_deploy_token(c: &mut NodeConfig) {
    c.admin_tokens
        .push(("deploy".into(), "deploy-token".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_admin_token_cannot_take_a_configured_name() {
    let c = TestCluster::start(1, with_deploy_token).await;
    let revision = c.revision(1);
    for name in ["admin", "deploy", "Admin", "DEPLOY"] {
        let (s, b) = c.post(1, "/v1/admin-tokens", json!({ "name": name })).await;
        assert_eq!(s, 400, "{name}: {b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("name:"), "{message}");
        assert!(b.get("secret").is_none());
    }
    assert_eq!(c.revision(1), revision, "a refused name reached the log");
    let (s, list) = c.get(1, "/v1/admin-tokens").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["admin_tokens"], json!([]), "{list}");

    // Another name works, and its changes are told apart from the configured tokens'.
    let (s, b) = c.post(1, "/v1/admin-tokens", json!({"name": "ops"})).await;
    assert_eq!(s, 200, "{b}");
    let ops = b["secret"].as_str().unwrap().to_string();
    let r = c
        .http
        .put(format!("{}/v1/namespaces/prod", c.node(1).api))
        .bearer_auth(&ops)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, h) = c.get(1, "/v1/namespaces/prod/history").await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["changes"][0]["actor"], "ops", "{h}");
    c.shutdown().await;
}
