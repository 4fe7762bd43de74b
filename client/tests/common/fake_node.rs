//! A scripted HTTP server speaking the node's SDK protocol, for what real nodes never do on
//! purpose: garbage, truncated streams, lagging or foreign answers. Real nodes are used for
//! everything else (see `real_cluster.rs`).

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// What the snapshot endpoint answers.
#[derive(Clone)]
pub enum SnapshotMode {
    /// The state below, honouring `If-None-Match`.
    Normal,
    /// This status, headers and body, verbatim.
    Raw(u16, Vec<(String, String)>, Vec<u8>),
    /// 200 with the usual headers and a body that never ends (no `Content-Length`).
    Endless,
    /// 200 with the usual headers, one byte of body, then nothing, the connection kept open.
    Stall,
}

/// A body that sends `first`, then never another byte nor its end.
fn stalled(first: &'static [u8]) -> Body {
    Body::from_stream(
        futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from_static(first)) })
            .chain(futures::stream::pending()),
    )
}

pub struct FakeState {
    pub cluster: String,
    pub namespace: String,
    pub revision: u64,
    pub flags: Value,
    pub staleness_ms: u64,
    pub snapshot: SnapshotMode,
    /// Whether `/watch` exists (404 otherwise).
    pub watch: bool,
    /// `/watch` answers 500 with an error body that stalls after its first byte.
    pub watch_stalled_error: bool,
    pub watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    pub snapshot_requests: Vec<Option<u64>>,
    pub watch_requests: Vec<Option<u64>>,
}

#[derive(Clone)]
pub struct FakeNode {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    task: Arc<tokio::task::AbortHandle>,
}

impl FakeNode {
    pub async fn start(cluster: &str, namespace: &str, revision: u64, flags: Value) -> FakeNode {
        let state = Arc::new(Mutex::new(FakeState {
            cluster: cluster.into(),
            namespace: namespace.into(),
            revision,
            flags,
            staleness_ms: 50,
            snapshot: SnapshotMode::Normal,
            watch: true,
            watch_stalled_error: false,
            watchers: Vec::new(),
            snapshot_requests: Vec::new(),
            watch_requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/namespaces/{ns}/snapshot", get(snapshot))
            .route("/v1/namespaces/{ns}/watch", get(watch))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
        .abort_handle();
        FakeNode {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn body(&self) -> Value {
        let s = self.state.lock().unwrap();
        json!({"namespace": s.namespace, "cluster_id": s.cluster, "revision": s.revision,
               "flags": s.flags, "segments": {}})
    }

    /// Sends raw bytes to every open watch stream; returns how many received them.
    pub fn send_raw(&self, text: &str) -> usize {
        let mut s = self.state.lock().unwrap();
        s.watchers
            .retain(|w| w.send(Bytes::copy_from_slice(text.as_bytes())).is_ok());
        s.watchers.len()
    }

    pub fn heartbeat(&self) -> usize {
        let (rev, st) = {
            let s = self.state.lock().unwrap();
            (s.revision, s.staleness_ms)
        };
        self.send_raw(&format!(
            "event: heartbeat\ndata: {{\"revision\":{rev},\"staleness_ms\":{st}}}\n\n"
        ))
    }

    /// Closes every open stream.
    pub fn drop_streams(&self) {
        self.state.lock().unwrap().watchers.clear();
    }

    pub fn watchers(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        s.watchers.retain(|w| !w.is_closed());
        s.watchers.len()
    }

    pub fn stop(&self) {
        self.task.abort();
        self.drop_streams();
    }
}

fn headers_for(s: &FakeState) -> Vec<(String, String)> {
    vec![
        ("flagstaff-cluster".into(), s.cluster.clone()),
        ("flagstaff-revision".into(), s.revision.to_string()),
        ("flagstaff-staleness-ms".into(), s.staleness_ms.to_string()),
        ("etag".into(), format!("\"{}\"", s.revision)),
    ]
}

fn respond(status: u16, headers: Vec<(String, String)>, body: Body) -> Response<Body> {
    let mut r = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r.body(body).unwrap()
}

async fn snapshot(
    State(state): State<Arc<Mutex<FakeState>>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response<Body> {
    let mut s = state.lock().unwrap();
    let min = q.get("min_revision").and_then(|v| v.parse::<u64>().ok());
    s.snapshot_requests.push(min);
    match s.snapshot.clone() {
        SnapshotMode::Raw(status, h, body) => respond(status, h, Body::from(body)),
        SnapshotMode::Endless => {
            let chunk = Bytes::from(vec![b' '; 16 << 10]);
            let endless = futures::stream::repeat(chunk).map(Ok::<_, Infallible>);
            respond(200, headers_for(&s), Body::from_stream(endless))
        }
        SnapshotMode::Stall => respond(200, headers_for(&s), stalled(b"{")),
        SnapshotMode::Normal => {
            if min.is_some_and(|m| m > s.revision) {
                return respond(
                    503,
                    vec![
                        ("flagstaff-cluster".into(), s.cluster.clone()),
                        ("retry-after".into(), "1".into()),
                    ],
                    Body::from(r#"{"error":{"code":"STALE_REPLICA","message":"behind"}}"#),
                );
            }
            let inm = headers.get("if-none-match").and_then(|v| v.to_str().ok());
            if inm == Some(&format!("\"{}\"", s.revision)) {
                return respond(304, headers_for(&s), Body::empty());
            }
            let body = json!({"namespace": s.namespace, "cluster_id": s.cluster, "revision": s.revision,
                              "flags": s.flags, "segments": {}});
            respond(200, headers_for(&s), Body::from(body.to_string()))
        }
    }
}

async fn watch(
    State(state): State<Arc<Mutex<FakeState>>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response<Body> {
    let mut s = state.lock().unwrap();
    let since = q.get("since").and_then(|v| v.parse::<u64>().ok());
    s.watch_requests.push(since);
    if !s.watch {
        return respond(404, vec![], Body::from("{}"));
    }
    if s.watch_stalled_error {
        return respond(500, headers_for(&s), stalled(b"{"));
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    if since != Some(s.revision) {
        let body = json!({"namespace": s.namespace, "cluster_id": s.cluster, "revision": s.revision,
                          "flags": s.flags, "segments": {}});
        let _ = tx.send(Bytes::from(format!(
            "event: snapshot\nid: {}\ndata: {body}\n\n",
            s.revision
        )));
    }
    s.watchers.push(tx);
    let mut h = headers_for(&s);
    h.push(("content-type".into(), "text/event-stream".into()));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    respond(200, h, Body::from_stream(stream))
}
