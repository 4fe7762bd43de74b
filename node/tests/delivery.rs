//! Delivering flags to applications: snapshot, watch stream, OFREP, SDK keys, audit history and
//! flagd import/export, against real nodes on loopback.

mod common;

use std::time::Duration;

use common::{bool_flag, TestCluster, TOKEN};
use flagstaff_node::NodeConfig;
use reqwest::Method;
use serde_json::{json, Value};

fn defaults(_: &mut NodeConfig) {}

/// Who serves a watch stream on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// A writer shard, on a connection taken over from hyper.
    TakenOver,
    /// Hyper, polling the stream as a response body.
    ByHyper,
}

/// A minimal Server-Sent Events reader for tests.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct Event {
    event: String,
    id: Option<u64>,
    data: Value,
}

impl Sse {
    async fn open(
        c: &TestCluster,
        node: u64,
        path: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> Sse {
        let url = format!("{}{path}", c.node(node).api);
        Sse::open_with(&c.http, &url, token, last_event_id).await
    }

    /// As [`Sse::open`], with `client` (whose timeouts apply to the whole stream).
    async fn open_with(
        client: &reqwest::Client,
        url: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> Sse {
        let mut req = client.get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        Sse::of(req.send().await.unwrap(), url)
    }

    /// The stream of `resp`, a watch of `url` that must have been answered 200.
    fn of(resp: reqwest::Response, url: &str) -> Sse {
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// As [`Sse::open`], served as `served` says: the watch opens a connection of its own
    /// (which the node takes over from hyper), or carries a body of two bytes (which leaves it
    /// to hyper, as following another request on its connection does: `tests/shutdown.rs`
    /// opens one that way). The response head tells them apart.
    async fn open_served(
        c: &TestCluster,
        node: u64,
        path: &str,
        token: &str,
        last_event_id: Option<u64>,
        served: Served,
    ) -> Sse {
        let url = format!("{}{path}", c.node(node).api);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut req = client.get(&url).bearer_auth(token);
        if served == Served::ByHyper {
            req = req.body("{}");
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let sse = Sse::of(req.send().await.unwrap(), &url);
        let close = sse.resp.headers().get("connection").map(|v| v.as_bytes());
        assert_eq!(
            close == Some(b"close".as_slice()),
            served == Served::TakenOver,
            "{served:?}: {:?}",
            sse.resp.headers()
        );
        sse
    }

    /// The next event, or `None` when the stream ends or `limit` passes.
    async fn next(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..pos + 2).collect();
                let mut ev = Event {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = serde_json::from_str(v).unwrap();
                    }
                }
                return Some(ev);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?
                .ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not a heartbeat.
    async fn next_change(&mut self, limit: Duration) -> Option<Event> {
        loop {
            let e = self.next(limit).await?;
            if e.event != "heartbeat" {
                return Some(e);
            }
        }
    }
}

async fn setup() -> TestCluster {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "prod").await;
    c
}

/// Creates an SDK key; returns the secret and the revision that created it (keys, like all
/// writes, reach followers within the staleness bound; `min_revision` makes tests exact).
async fn sdk_key(c: &TestCluster, ns: &str, name: &str) -> (String, u64) {
    let (s, b) = c
        .post(
            1,
            &format!("/v1/namespaces/{ns}/sdk-keys"),
            json!({"name": name}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    (
        b["secret"].as_str().unwrap().to_string(),
        b["revision"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_with_etag_and_sdk_keys() {
    let c = setup().await;
    c.put(1, "/v1/namespaces/other", json!({})).await;
    c.put(2, "/v1/namespaces/prod/flags/a", bool_flag("on"))
        .await;
    let (key, created) = sdk_key(&c, "prod", "web").await;

    let url = format!(
        "{}/v1/namespaces/prod/snapshot?min_revision={created}",
        c.node(3).api
    );
    let r = c.http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("flagstaff-staleness-ms"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["flags"]["a"]["defaultVariant"], "on");
    assert_eq!(body["cluster_id"], "test-cluster");
    assert_eq!(etag, format!("\"{}\"", body["revision"]));

    // Unchanged since: 304. A change elsewhere in the cluster does not matter.
    c.put(1, "/v1/namespaces/other/flags/x", bool_flag("on"))
        .await;
    let r = c
        .http
        .get(&url)
        .bearer_auth(&key)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Changed: 200 with the new state.
    let (_, b) = c
        .put(1, "/v1/namespaces/prod/flags/b", bool_flag("off"))
        .await;
    let after_b = format!(
        "{}/v1/namespaces/prod/snapshot?min_revision={}",
        c.node(3).api,
        b["revision"]
    );
    let r = c
        .http
        .get(&after_b)
        .bearer_auth(&key)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The key reads only its namespace and no admin route.
    let r = c
        .http
        .get(format!("{}/v1/namespaces/other/snapshot", c.node(3).api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .http
        .get(format!("{}/v1/namespaces/prod/flags", c.node(3).api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Listed without the secret, then revoked: refused on every node.
    let (_, list) = c.get(2, "/v1/namespaces/prod/sdk-keys").await;
    assert_eq!(list["sdk_keys"][0]["name"], "web");
    assert!(!list.to_string().contains(&key));
    let (s, revoked, _) = c
        .request(2, Method::DELETE, "/v1/namespaces/prod/sdk-keys/web", None)
        .await;
    assert_eq!(s, 200, "{revoked}");
    let after = revoked["revision"].as_u64().unwrap();
    for node in 1..=3 {
        // Within the staleness bound every node knows; min_revision makes the test exact.
        let r = c
            .http
            .get(format!(
                "{}/v1/namespaces/prod/snapshot?min_revision={after}",
                c.node(node).api
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "node {node}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_changes_in_order_and_resumes_without_gaps() {
    streams_changes_in_order_and_resumes_without_gaps(Served::TakenOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_served_by_hyper_stream_changes_in_order_and_resume_without_gaps() {
    streams_changes_in_order_and_resumes_without_gaps(Served::ByHyper).await;
}

async fn streams_changes_in_order_and_resumes_without_gaps(served: Served) {
    let c = setup().await;
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);
    c.put(leader, "/v1/namespaces/other", json!({})).await;
    let watch = "/v1/namespaces/prod/watch";
    let mut w = Sse::open_served(&c, follower, watch, TOKEN, None, served).await;
    let first = w.next_change(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.event, "snapshot");
    let mut last = first.id.unwrap();

    let mut written = Vec::new();
    for i in 0..5 {
        let (_, b) = c
            .put(
                leader,
                &format!("/v1/namespaces/prod/flags/f{i}"),
                bool_flag("on"),
            )
            .await;
        written.push(b["revision"].as_u64().unwrap());
        // Changes in another namespace are not sent.
        c.put(
            leader,
            &format!("/v1/namespaces/other/flags/f{i}"),
            bool_flag("on"),
        )
        .await;
    }
    let (s, deleted, _) = c
        .request(leader, Method::DELETE, "/v1/namespaces/prod/flags/f0", None)
        .await;
    assert_eq!(s, 200, "{deleted}");
    let delete_rev = deleted["revision"].as_u64().unwrap();
    written.push(delete_rev);

    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let e = w
            .next_change(Duration::from_secs(5))
            .await
            .expect("change event");
        assert_eq!(e.event, "change", "{e:?}");
        let rev = e.id.unwrap();
        assert!(rev > last, "out of order or duplicate: {rev} after {last}");
        assert_eq!(e.data["revision"].as_u64(), Some(rev));
        if let Some(prev) = seen.last().and_then(|p: &Event| p.id) {
            assert_eq!(
                e.data["prev_revision"].as_u64(),
                Some(prev),
                "prev_revision names the namespace's previous change"
            );
        }
        last = rev;
        seen.push(e);
    }
    let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, written);
    assert_eq!(
        seen[0].data["upserted"]["flags"]["f0"]["defaultVariant"],
        "on"
    );
    assert_eq!(seen.last().unwrap().data["deleted"]["flags"], json!(["f0"]));

    // A heartbeat arrives while nothing changes, carrying a provable staleness.
    let hb = loop {
        let e = w.next(Duration::from_secs(3)).await.expect("heartbeat");
        if e.event == "heartbeat" {
            break e;
        }
    };
    assert!(hb.data["staleness_ms"].as_u64().unwrap() <= 2000);
    assert_eq!(hb.data["revision"].as_u64(), Some(c.revision(follower)));
    drop(w);

    // Resume from the middle on another node: exactly the missed changes, no snapshot.
    let resume_from = ids[2];
    let mut w = Sse::open_served(&c, leader, watch, TOKEN, Some(resume_from), served).await;
    let mut resumed = Vec::new();
    while resumed.len() < ids.len() - 3 {
        let e = w
            .next_change(Duration::from_secs(5))
            .await
            .expect("replayed change");
        assert_eq!(e.event, "change");
        resumed.push(e.id.unwrap());
    }
    assert_eq!(resumed, ids[3..].to_vec());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_node_sends_stale_and_closes_and_a_revoked_key_closes_its_stream() {
    stale_and_revoked_streams_close(Served::TakenOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_served_by_hyper_close_after_stale_and_after_a_revoked_key() {
    stale_and_revoked_streams_close(Served::ByHyper).await;
}

async fn stale_and_revoked_streams_close(served: Served) {
    let c = setup().await;
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);
    let (key, created) = sdk_key(&c, "prod", "mobile").await;

    let path = format!("/v1/namespaces/prod/watch?max_staleness_ms=500&min_revision={created}");
    let mut cut = Sse::open_served(&c, follower, &path, &key, None, served).await;
    assert_eq!(
        cut.next_change(Duration::from_secs(5)).await.unwrap().event,
        "snapshot"
    );
    let path = format!("/v1/namespaces/prod/watch?min_revision={created}");
    let mut revoked = Sse::open_served(&c, leader, &path, &key, None, served).await;
    assert_eq!(
        revoked
            .next_change(Duration::from_secs(5))
            .await
            .unwrap()
            .event,
        "snapshot"
    );

    c.isolate(follower);
    let e = cut
        .next_change(Duration::from_secs(5))
        .await
        .expect("stale event");
    assert_eq!(e.event, "stale", "{e:?}");
    assert!(
        cut.next(Duration::from_secs(3)).await.is_none(),
        "stream must close after stale"
    );
    c.heal();

    let (s, _, _) = c
        .request(
            leader,
            Method::DELETE,
            "/v1/namespaces/prod/sdk-keys/mobile",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let e = revoked
        .next_change(Duration::from_secs(5))
        .await
        .expect("error event");
    assert_eq!(e.event, "error", "{e:?}");
    assert!(
        revoked.next(Duration::from_secs(3)).await.is_none(),
        "stream must close after revocation"
    );
    c.shutdown().await;
}

/// A watch of `prod` on `node` (`query` after the path, `token` its credential) by a client
/// that never reads, on a connection of its own with a small receive buffer: the node's side
/// fills after a little data, whatever the machine's TCP buffer tuning.
async fn never_reading_watch(
    c: &TestCluster,
    node: u64,
    query: &str,
    token: &str,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(c.node(node).client_addr).await.unwrap();
    let request = format!(
        "GET /v1/namespaces/prod/watch{query} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stuck, request.as_bytes())
        .await
        .unwrap();
    stuck
}

/// `writes` changes of about 8 KB each to `prod` through `node`, 8 at a time (flags
/// `{prefix}0`..`{prefix}7`, rewritten); their revisions, in order.
async fn padded_writes(c: &TestCluster, node: u64, writes: usize, prefix: &str) -> Vec<u64> {
    let padding = "x".repeat(8 * 1024);
    let mut written = Vec::new();
    for round in 0..writes / 8 {
        let puts = (0..8).map(|k| {
            let mut flag = bool_flag("on");
            flag["description"] = json!(format!("{round} {padding}"));
            let path = format!("/v1/namespaces/prod/flags/{prefix}{k}");
            async move { c.put(node, &path, flag).await }
        });
        for (s, b) in futures::future::join_all(puts).await {
            assert_eq!(s, 200, "{b}");
            written.push(b["revision"].as_u64().unwrap());
        }
    }
    written.sort_unstable();
    written
}

/// Whether the node closes `stuck` within 30 s (what it was sent is read and dropped).
async fn closed_by_the_node(stuck: &mut tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    let read_to_end = async {
        loop {
            match tokio::io::AsyncReadExt::read(stuck, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_to_end)
        .await
        .is_ok()
}

/// The node's count of streams it dropped for falling behind.
async fn slow_dropped(c: &TestCluster, node: u64) -> u64 {
    let text = c
        .http
        .get(format!("{}/metrics", c.node(node).api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("flagstaff_watch_slow_subscribers_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_over_stream_that_stops_reading_is_dropped_and_the_others_miss_nothing() {
    let c = setup().await;
    let leader = c.wait_leader().await;
    // A client that sends its watch and never reads: its socket fills, then its queue.
    let mut stuck = never_reading_watch(&c, leader, "", TOKEN).await;
    let watch = "/v1/namespaces/prod/watch";
    let mut reader = Sse::open_served(&c, leader, watch, TOKEN, None, Served::TakenOver).await;
    assert_eq!(
        reader
            .next_change(Duration::from_secs(5))
            .await
            .unwrap()
            .event,
        "snapshot"
    );
    let before = slow_dropped(&c, leader).await;

    // Changes of about 8 KB, more than the stuck socket's buffers and a stream's queue
    // (1,024 frames) hold, 8 at a time, while the other stream reads them as they come.
    const WRITES: usize = 1_600;
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < WRITES {
            match reader.next_change(Duration::from_secs(20)).await {
                Some(e) => seen.push(e.id.unwrap()),
                None => break,
            }
        }
        seen
    });
    let written = padded_writes(&c, leader, WRITES, "big").await;
    let seen = reading.await.unwrap();
    assert_eq!(
        seen, written,
        "every change reaches the stream that reads, in order"
    );
    assert!(
        slow_dropped(&c, leader).await > before,
        "the stream that stopped reading was not dropped"
    );
    // Its connection is closed: what it was sent ends, bounded.
    assert!(
        closed_by_the_node(&mut stuck).await,
        "the dropped stream's connection stayed open"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_over_stream_left_unread_after_its_closing_frame_is_closed() {
    let c = setup().await;
    let leader = c.wait_leader().await;
    let (key, created) = sdk_key(&c, "prod", "stuck").await;
    // A client that never reads: its socket fills, but its queue stays under 1,024 frames.
    let query = format!("?min_revision={created}");
    let mut stuck = never_reading_watch(&c, leader, &query, &key).await;
    let before = slow_dropped(&c, leader).await;
    // About 7 MB of changes: far more than the socket's buffers take, fewer frames than a
    // stream may have queued.
    padded_writes(&c, leader, 900, "pad").await;
    // Its key revoked: the `error` frame is queued last, behind what the client never read.
    let (s, _, _) = c
        .request(
            leader,
            Method::DELETE,
            "/v1/namespaces/prod/sdk-keys/stuck",
            None,
        )
        .await;
    assert_eq!(s, 200);
    // Within the grace (10 s) and a tick, the node gives up on it, counting it as slow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while slow_dropped(&c, leader).await == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a stream that never read its closing frame kept its connection"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And its connection is closed: what it was sent ends, bounded.
    assert!(
        closed_by_the_node(&mut stuck).await,
        "the given-up stream's connection stayed open"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ofrep_evaluates_with_the_shared_evaluator() {
    let c = setup().await;
    let (key, _) = sdk_key(&c, "prod", "ofrep").await;
    c.put(
        1,
        "/v1/namespaces/prod/segments/staff",
        json!({"ends_with": [{"var": "email"}, "@example.com"]}),
    )
    .await;
    let flags = [
        (
            "new-checkout",
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "staff"}, "on", "off"]}}),
        ),
        (
            "banner",
            json!({"state": "ENABLED", "variants": {"a": "hello", "b": "bye"}, "defaultVariant": "a"}),
        ),
        (
            "limit",
            json!({"state": "ENABLED", "variants": {"low": 10, "high": 2.5}, "defaultVariant": "low"}),
        ),
        (
            "split",
            json!({"state": "ENABLED", "variants": {"x": {"c": 1}, "y": {"c": 2}}, "defaultVariant": "x",
            "targeting": {"fractional": [["x", 50], ["y", 50]]}}),
        ),
        (
            "off",
            json!({"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
        ),
    ];
    let mut rev = 0;
    for (k, def) in &flags {
        let (s, b) = c
            .put(1, &format!("/v1/namespaces/prod/flags/{k}"), def.clone())
            .await;
        assert_eq!(s, 200, "{b}");
        rev = b["revision"].as_u64().unwrap();
    }
    // Reads are bounded-stale; min_revision makes this test exact.
    let eval = |flag: &str, ctx: Value| {
        c.http
            .post(format!(
                "{}/ofrep/v1/evaluate/flags/{flag}?min_revision={rev}",
                c.node(2).api
            ))
            .bearer_auth(&key)
            .json(&json!({"context": ctx}))
            .send()
    };
    let r = eval(
        "new-checkout",
        json!({"targetingKey": "u1", "email": "a@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (
            b["value"].clone(),
            b["variant"].clone(),
            b["reason"].clone()
        ),
        (json!(true), json!("on"), json!("TARGETING_MATCH"))
    );
    let b: Value = eval("new-checkout", json!({"email": "a@other.org"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        b["value"], false,
        "a context without targetingKey is accepted: {b}"
    );
    let b: Value = eval("banner", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (b["value"].clone(), b["reason"].clone()),
        (json!("hello"), json!("STATIC"))
    );
    let text = eval("limit", json!({}))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"value\":10"),
        "integers stay integers: {text}"
    );
    let b: Value = eval("split", json!({"targetingKey": "user-42"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["reason"], "SPLIT", "{b}");
    assert!(b["value"]["c"].is_i64());
    let b: Value = eval("off", json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(
        (b["value"].clone(), b["reason"].clone()),
        (json!(false), json!("DISABLED"))
    );

    let r = eval("missing", json!({})).await.unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["key"].clone(), b["errorCode"].clone()),
        (json!("missing"), json!("FLAG_NOT_FOUND"))
    );
    let r = eval("banner", json!("not an object")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errorCode"],
        "INVALID_CONTEXT"
    );
    let r = c
        .http
        .post(format!("{}/ofrep/v1/evaluate/flags/banner", c.node(2).api))
        .bearer_auth("nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Request-level failures keep OFREP's error shape too.
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["key"].clone(), b["errorCode"].clone()),
        (json!("banner"), json!("GENERAL"))
    );
    assert!(b["errorDetails"].as_str().is_some_and(|d| !d.is_empty()));

    // Bulk, with ETag → 304 until the namespace changes.
    let bulk = |etag: Option<String>, rev: u64| {
        let mut r = c
            .http
            .post(format!(
                "{}/ofrep/v1/evaluate/flags?min_revision={rev}",
                c.node(3).api
            ))
            .bearer_auth(&key)
            .json(&json!({"context": {"targetingKey": "u1"}}));
        if let Some(e) = etag {
            r = r.header("If-None-Match", e);
        }
        r.send()
    };
    let r = bulk(None, rev).await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["flags"].as_array().unwrap().len(), flags.len());
    assert_eq!(bulk(Some(etag.clone()), rev).await.unwrap().status(), 304);
    let patched: Value = c
        .http
        .patch(format!("{}/v1/namespaces/prod/flags/banner", c.node(1).api))
        .bearer_auth(TOKEN)
        .json(&json!({"defaultVariant": "b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = bulk(Some(etag), patched["revision"].as_u64().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a write must invalidate the ETag");
    let b: Value = r.json().await.unwrap();
    let banner = b["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "banner")
        .unwrap()
        .clone();
    assert_eq!(banner["value"], "bye");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flagd_import_is_atomic_and_history_records_who_changed_what() {
    let c = setup().await;
    let doc = json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
                  "targeting": {"if": [{"$ref": "beta"}, "off", null]}},
            "b": {"state": "ENABLED", "variants": {"x": "1", "y": "2"}, "defaultVariant": "x"}
        },
        "$evaluators": {"beta": {"in": [{"var": "email"}, ["a@x.io"]]}}
    });
    let before = c.revision(1);
    let (s, b) = c.put(2, "/v1/namespaces/prod/flagd", doc.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["revision"].as_u64(),
        Some(before + 1),
        "one import, one revision"
    );
    let (_, exported) = c.get(3, "/v1/namespaces/prod/flagd").await;
    assert_eq!(exported["flags"], doc["flags"]);
    assert_eq!(exported["$evaluators"], doc["$evaluators"]);

    // An invalid document is refused whole, with paths, and changes nothing.
    let mut bad = doc.clone();
    bad["flags"]["b"]["defaultVariant"] = json!("z");
    bad["flags"]["c"] = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "targeting": {"$ref": "nope"}});
    let rev = c.revision(1);
    let (s, b) = c.put(1, "/v1/namespaces/prod/flagd", bad).await;
    assert_eq!(s, 400);
    let paths: Vec<&str> = b["error"]["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("flags.b.defaultVariant")),
        "{paths:?}"
    );
    assert!(paths.iter().any(|p| p.starts_with("flags.c")), "{paths:?}");
    assert_eq!(c.revision(1), rev);

    // Replacing with a smaller document deletes what it no longer has, in the same revision.
    let small = json!({"flags": {"b": doc["flags"]["b"].clone()}});
    let (s, b) = c.put(1, "/v1/namespaces/prod/flagd", small).await;
    assert_eq!(s, 200, "{b}");
    let (_, list) = c.get(2, "/v1/namespaces/prod/flags").await;
    assert_eq!(list["flags"].as_array().unwrap().len(), 1);

    let (s, hist) = c.get(3, "/v1/namespaces/prod/history?limit=1").await;
    assert_eq!(s, 200, "{hist}");
    let latest = &hist["changes"][0];
    assert_eq!(latest["actor"], "admin");
    let items = latest["items"].as_array().unwrap();
    assert!(
        items.iter().any(|i| i["key"] == "a"
            && i["after"].is_null()
            && i["before"]["defaultVariant"] == "on"),
        "{latest}"
    );
    let next = hist["next_before"].as_u64().expect("another page");
    let (_, page2) = c
        .get(
            3,
            &format!("/v1/namespaces/prod/history?before={next}&key=a"),
        )
        .await;
    assert!(page2["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["revision"].as_u64().unwrap() < next));
    assert!(
        page2["changes"][0]["items"][0]["after"]["targeting"].is_object(),
        "{page2}"
    );
    c.shutdown().await;
}

fn slow_rate(cfg: &mut NodeConfig) {
    cfg.evaluation_rate_per_sec = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ofrep_answers_429_with_retry_after_past_the_rate() {
    let c = TestCluster::start(3, slow_rate).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "prod").await;
    let (key, created) = sdk_key(&c, "prod", "busy").await;
    c.put(leader, "/v1/namespaces/prod/flags/a", bool_flag("on"))
        .await;
    let url = format!(
        "{}/ofrep/v1/evaluate/flags/a?min_revision={}",
        c.node(leader).api,
        created + 1
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = c
            .http
            .post(&url)
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
            let b: Value = r.json().await.unwrap();
            assert_eq!(b["errorCode"], "GENERAL", "{b}");
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    c.shutdown().await;
}

fn small_snapshots(cfg: &mut NodeConfig) {
    cfg.snapshot_every = 20;
    cfg.logs_behind_snapshot = 0;
    // Long enough that the stream outlives the short partition below.
    cfg.max_staleness = Duration::from_secs(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_on_a_node_that_installs_a_raft_snapshot_gets_a_fresh_snapshot_event() {
    let c = TestCluster::start(3, small_snapshots).await;
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);
    c.create_namespace(leader, "prod").await;
    let mut w = Sse::open(
        &c,
        follower,
        "/v1/namespaces/prod/watch?max_staleness_ms=5000",
        TOKEN,
        None,
    )
    .await;
    let first = w.next_change(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.event, "snapshot");

    // Cut off, the follower misses enough entries that the leader must send a snapshot.
    c.isolate(follower);
    let mut last = 0;
    for i in 0..60 {
        let (s, b) = c
            .put(
                leader,
                &format!("/v1/namespaces/prod/flags/f{i}"),
                bool_flag("on"),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        last = b["revision"].as_u64().unwrap();
    }
    c.heal();

    // The stream never skips silently: what the installed snapshot covers arrives as a fresh
    // `snapshot` event, then the entries after it as changes, in order, up to the last write.
    let mut flags = std::collections::BTreeSet::new();
    let (mut saw_snapshot, mut at) = (false, 0);
    while at < last {
        let e = w
            .next_change(Duration::from_secs(10))
            .await
            .expect("events up to the last write");
        let id = e.id.unwrap();
        match e.event.as_str() {
            "snapshot" => {
                saw_snapshot = true;
                flags = e.data["flags"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect();
            }
            "change" => {
                assert!(id > at, "change {id} after {at}");
                flags.extend(
                    e.data["upserted"]["flags"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .cloned(),
                );
            }
            other => panic!("unexpected {other}: {e:?}"),
        }
        at = id;
    }
    assert!(
        saw_snapshot,
        "the snapshot install must reach the stream as a snapshot event"
    );
    assert_eq!(flags.len(), 60);
    c.shutdown().await;
}

const HISTORY: usize = 400;

fn short_history(c: &mut NodeConfig) {
    c.state_limits.history = HISTORY;
}

/// Many streams resuming at once from the oldest retained revision each get every change of
/// their namespace since, gap-free and in order, while another client's writes keep landing;
/// a resume from before the retained history gets a snapshot instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_streams_resume_from_the_oldest_retained_revision_at_once() {
    const STREAMS: usize = 1_000;
    const LIVE_WRITES: usize = 50;
    let c = TestCluster::start(1, short_history).await;
    c.wait_leader().await;
    c.create_namespace(1, "prod").await;
    c.put(1, "/v1/namespaces/other", json!({})).await;
    // More changes than the history keeps, a quarter of them in another namespace.
    let mut prod = Vec::new();
    let mut last = 0;
    for i in 0..HISTORY + 80 {
        let path = if i % 4 == 3 {
            format!("/v1/namespaces/other/flags/g{}", i % 20)
        } else {
            format!("/v1/namespaces/prod/flags/f{}", i % 50)
        };
        let (s, b) = c.put(1, &path, bool_flag(["on", "off"][i % 2])).await;
        assert_eq!(s, 200, "{b}");
        last = b["revision"].as_u64().unwrap();
        if i % 4 != 3 {
            prod.push(last);
        }
    }
    // Every write is one revision and one retained change, so the history's oldest change is
    // `last - HISTORY + 1` now and moves up one per live write below. The streams resume from
    // where it will be after the last live write; the too-old ones from before where it is now.
    let since = last - HISTORY as u64 + LIVE_WRITES as u64;
    let before_history = last - HISTORY as u64 - 1;

    // Without the harness client's 20 s timeout, which would cut a stream, not a request.
    let streams = reqwest::Client::new();
    let url = format!("{}/v1/namespaces/prod/watch", c.node(1).api);
    let open = |from: u64| {
        let (streams, url) = (streams.clone(), url.clone());
        tokio::spawn(async move { Sse::open_with(&streams, &url, TOKEN, Some(from)).await })
    };
    let opening: Vec<_> = (0..STREAMS).map(|_| open(since)).collect();
    let too_old: Vec<_> = (0..10).map(|_| open(before_history)).collect();
    // Writes while the streams open: each must succeed, and reach every stream in order.
    let mut live = Vec::new();
    for i in 0..LIVE_WRITES {
        let (s, b) = c
            .put(
                1,
                &format!("/v1/namespaces/prod/flags/live{i}"),
                bool_flag("on"),
            )
            .await;
        assert_eq!(s, 200, "a write during the resumes failed: {b}");
        live.push(b["revision"].as_u64().unwrap());
    }
    let (s, _) = c.get(1, "/v1/namespaces/prod/flags/live0").await;
    assert_eq!(s, 200, "a read during the resumes failed");

    let expected: Vec<u64> = prod
        .iter()
        .copied()
        .filter(|r| *r > since)
        .chain(live.iter().copied())
        .collect();
    let end = *expected.last().unwrap();
    let mut readers = Vec::new();
    for task in opening {
        let expected = expected.clone();
        readers.push(tokio::spawn(async move {
            let mut sse = task.await.unwrap();
            let mut got = Vec::new();
            while got.last().is_none_or(|r| *r < end) {
                let e = sse
                    .next_change(Duration::from_secs(60))
                    .await
                    .expect("the stream ended before the last write reached it");
                assert_eq!(
                    e.event, "change",
                    "a resume inside the history replays: {e:?}"
                );
                got.push(e.id.unwrap());
            }
            assert_eq!(
                got, expected,
                "a resumed stream skipped or repeated a change"
            );
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    for task in too_old {
        let mut sse = task.await.unwrap();
        let e = sse.next_change(Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            e.event, "snapshot",
            "a resume from before the history gets a snapshot"
        );
    }
}

/// A flagd document with what flagd accepts but Flagstaff refuses for single writes imports,
/// with each such construct as a warning with its path, and evaluates as flagd does; a single
/// write of the same refuses it unless it asks for flagd semantics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flagd_documents_import_as_flagd_loads_them_and_evaluate_as_flagd_does() {
    let c = setup().await;
    let (key, _) = sdk_key(&c, "prod", "flagd-import").await;
    let nums = json!({"one": 1, "two": 2});
    let doc = json!({"flags": {
        // The branch taken names no variant: GENERAL.
        "missing-variant": {"state": "ENABLED", "variants": nums, "defaultVariant": "two",
            "targeting": {"if": [true, "three", "one"]}},
        // sem_ver cannot compare (two arguments; an operator that is not one): null, so the
        // default variant with reason DEFAULT.
        "semver-two-args": {"state": "ENABLED", "variants": nums, "defaultVariant": "two",
            "targeting": {"sem_ver": [{"var": "version"}, "="]}},
        "semver-bad-operator": {"state": "ENABLED", "variants": nums, "defaultVariant": "two",
            "targeting": {"if": [{"sem_ver": ["1.0.0", "===", "1.0.0"]}, "one", "two"]}},
        // A negative weight counts as 0: everyone gets "two".
        "negative-weight": {"state": "ENABLED", "variants": nums, "defaultVariant": "one",
            "targeting": {"fractional": [["one", -50], ["two", 100]]}},
        // An operator flagd does not know: the flag is stored and evaluates to PARSE_ERROR.
        "unknown-operator": {"state": "ENABLED", "variants": nums, "defaultVariant": "two",
            "targeting": {"no-such-operator": [1]}},
        "fine": {"state": "ENABLED", "variants": nums, "defaultVariant": "one"},
    }});
    let (s, b) = c.put(1, "/v1/namespaces/prod/flagd", doc.clone()).await;
    assert_eq!(s, 200, "{b}");
    let warned: Vec<&str> = b["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        warned,
        [
            "flags.missing-variant.targeting.if[1]",
            "flags.negative-weight.targeting.fractional[0][1]",
            "flags.semver-bad-operator.targeting.if[0].sem_ver[1]",
            "flags.semver-two-args.targeting.sem_ver",
            "flags.unknown-operator.targeting.no-such-operator",
        ],
        "{b}"
    );
    let rev = b["revision"].as_u64().unwrap();
    let r: Value = c
        .http
        .post(format!(
            "{}/ofrep/v1/evaluate/flags?min_revision={rev}",
            c.node(2).api
        ))
        .bearer_auth(&key)
        .json(&json!({"context": {"targetingKey": "u1", "version": "1.0.0"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flag = |k: &str| {
        r["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} not evaluated: {r}"))
    };
    assert_eq!(flag("missing-variant")["errorCode"], "GENERAL", "{r}");
    let f = flag("semver-two-args");
    assert_eq!(
        (&f["value"], &f["reason"]),
        (&json!(2), &json!("DEFAULT")),
        "{f}"
    );
    assert_eq!(flag("semver-bad-operator")["value"], 2, "{r}");
    assert_eq!(flag("negative-weight")["value"], 2, "{r}");
    assert_eq!(flag("unknown-operator")["errorCode"], "PARSE_ERROR", "{r}");
    assert_eq!(flag("fine")["value"], 1, "{r}");

    // A single write refuses the same constructs, saying how to store them as flagd would...
    let def = doc["flags"]["missing-variant"].clone();
    let (s, b) = c.put(1, "/v1/namespaces/prod/flags/w", def.clone()).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["faults"][0]["path"], "targeting.if[1]", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("flagd_semantics=true"),
        "{b}"
    );
    // ...and stores them when asked to, with the warnings.
    let (s, b) = c
        .put(1, "/v1/namespaces/prod/flags/w?flagd_semantics=true", def)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["warnings"][0]["path"], "targeting.if[1]", "{b}");
    // A PATCH of such a flag needs the same opt-in.
    let patch = json!({"state": "DISABLED"});
    let (s, b, _) = c
        .request(
            1,
            reqwest::Method::PATCH,
            "/v1/namespaces/prod/flags/w",
            Some(patch.clone()),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let path = "/v1/namespaces/prod/flags/w?flagd_semantics=true";
    let (s, b, _) = c
        .request(1, reqwest::Method::PATCH, path, Some(patch))
        .await;
    assert_eq!(s, 200, "{b}");
    c.shutdown().await;
}
