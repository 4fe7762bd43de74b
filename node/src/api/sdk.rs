//! The SDK API: a namespace snapshot to start from and a watch stream of its changes (SSE).
//! Readable with the namespace's SDK key or an admin token; bounded consistency by default.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flagstaff_api::sdk::{ErrorEvent, NamespaceSnapshot, StaleEvent};
use flagstaff_raft_store::{Change, State as StoreState};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::{
    no_namespace as not_found, InPath, InQuery, NsPath, Read, ReadParams, ReadQuery,
};
use crate::api::{revision_header, staleness_header};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::node::{Consistency, Node};
use crate::watch_hub::{sse_frame, sse_frame_no_id, CredentialsSeen, HubMessage, Tick};

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(snapshot))
        .routes(routes!(watch))
}

/// The revision in `If-None-Match: "R"` (a list or `*` is not meaningful here).
fn if_none_match(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// All flags and segments of a namespace, with the revision they reflect. Bounded consistency
/// by default; `If-None-Match: "R"` also acts as `min_revision=R`.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/snapshot", tag = "sdk", security(("bearer" = [])),
    params(NsPath, ReadQuery,
        ("If-None-Match" = Option<String>, Header, description = "a revision held, e.g. `\"42\"`")),
    responses(
        (status = 200, description = "the namespace; ETag is the revision", body = NamespaceSnapshot),
        (status = 304, description = "nothing in the namespace changed since the revision in If-None-Match"),
        (status = 429, description = "this node starts watch streams and snapshot requests at a bounded \
        rate (`--sdk-admission-rate`) and this one would have queued too long; see Retry-After",
        body = crate::error::ErrorBody)))]
async fn snapshot(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    path: Result<InPath<NsPath>, ApiError>,
    read: Result<Read<false>, ApiError>,
    headers: HeaderMap,
) -> Response {
    let resp = match (caller, path, read) {
        (Ok(caller), Ok(InPath(NsPath { ns })), Ok(Read(params))) => {
            serve_snapshot(&node, caller, ns, params, &headers)
                .await
                .into_response()
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => e.into_response(),
    };
    crate::metrics::Metrics::answered(&node.metrics.snapshot_requests, resp.status().as_u16());
    resp
}

async fn serve_snapshot(
    node: &Node,
    caller: Caller,
    ns: String,
    params: ReadParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    caller.check_namespace(&ns)?;
    let held = if_none_match(headers);
    // A client holding revision R must never get anything older: R acts as `min_revision`.
    let min = params.min_revision.max(held);
    node.sdk_admission.admit().await?;
    let proof = node.read_barrier(params.consistency, min).await?;
    caller.check_still_valid(node)?;
    let (revision, snapshot) = {
        let state = node.state.read();
        let space = state.namespace(&ns).ok_or_else(|| not_found(&ns))?;
        match held {
            Some(r) if space.last_change <= r => (state.revision(), None),
            _ => {
                let snap = node
                    .snapshots
                    .get(&state, &ns)
                    .ok_or_else(|| not_found(&ns))?;
                (snap.revision, Some(snap))
            }
        }
    };
    let mut resp = match snapshot {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(snap) => {
            let chunks = snap
                .json_chunks(&ns, &node.cluster_id)
                .await
                .ok_or_else(|| ApiError::Unavailable("the snapshot could not be built".into()))?;
            let mut resp = Response::new(crate::snapshot_cache::body_of(chunks));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
    };
    let etag = HeaderValue::from_str(&format!("\"{revision}\""))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    resp.headers_mut().insert(header::ETAG, etag);
    revision_header(&mut resp, revision);
    if let Some(s) = proof.staleness_ms {
        staleness_header(&mut resp, s);
    }
    Ok(resp)
}

/// Where a watch resumes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    /// Resume after this revision (as `Last-Event-ID` does).
    since: Option<u64>,
}

/// `GET /v1/namespaces/{ns}/watch`: `snapshot` first (or the missed changes when resuming
/// with `Last-Event-ID`/`since`), then `change` events in revision order, `heartbeat`s while the
/// node can prove its bound, `stale` and close when it cannot.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/watch", tag = "sdk", security(("bearer" = [])),
    params(NsPath, ReadQuery, WatchQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this revision")),
    responses((status = 200, description = "Server-Sent Events: `snapshot`, `change` (id = revision), \
        `heartbeat` {revision, staleness_ms}, `stale` (then the stream closes), `error`",
        content_type = "text/event-stream", body = String),
        (status = 429, description = "this key already has the most watch streams this node allows \
        open (`--max-watch-streams-per-key`), or the node's pace of new streams and snapshot \
        requests (`--sdk-admission-rate`) would have queued this one too long; see Retry-After",
        body = crate::error::ErrorBody)))]
async fn watch(
    State(node): State<Arc<Node>>,
    caller: Caller,
    InPath(NsPath { ns }): InPath<NsPath>,
    Read(params): Read<false>,
    InQuery(WatchQuery { mut since }): InQuery<WatchQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.check_namespace(&ns)?;
    let who = match &caller {
        Caller::Admin(name) => format!("admin:{name}"),
        Caller::Sdk { hash, .. } => format!("sdk:{hash}"),
    };
    let slot = node
        .watch_streams
        .acquire(&who)
        .ok_or(ApiError::RateLimited {
            retry_after_secs: 5,
        })?;
    if let Some(v) = headers.get("last-event-id") {
        let revision = v.to_str().ok().and_then(|t| t.parse().ok());
        let revision = revision.ok_or_else(|| {
            ApiError::bad_request(format!("Last-Event-ID: {v:?} is not a revision"))
        })?;
        since = Some(revision);
    }
    let bound = match params.consistency {
        Consistency::Bounded(b) => b,
        Consistency::Linearizable => node.config.max_staleness,
    };

    node.sdk_admission.admit().await?;
    // Subscribe before reading the state, so nothing applied after the read can be missed;
    // events at or below the read revision are dropped as duplicates.
    let rx = node
        .hub
        .subscribe(&ns)
        .ok_or_else(|| ApiError::Unavailable("this node is stopping".into()))?;
    node.read_barrier(params.consistency, params.min_revision.max(since))
        .await?;
    caller.check_still_valid(&node)?;
    let (replay, snapshot, last) = {
        let state = node.state.read();
        if state.namespace(&ns).is_none() {
            return Err(not_found(&ns));
        }
        let revision = state.revision();
        match since.and_then(|s| changes_since(&state, s)) {
            Some(changes) => (changes, None, revision),
            None => (Vec::new(), node.snapshots.get(&state, &ns), revision),
        }
    };
    let initial = match snapshot {
        Some(snap) => snap
            .sse_chunks(&ns, &node.cluster_id)
            .await
            .ok_or_else(|| ApiError::Unavailable("the snapshot could not be built".into()))?
            .to_vec(),
        None => replay_frames(replay, ns.clone()).await?,
    };

    // The response body is the stream itself: no task or channel of its own. Hyper polls it
    // when the connection can take more; a client that stops reading lets its hub channel
    // overflow and is closed. The slot is held, and the stream counted open, as long as the
    // body lives (until the client goes away).
    let stream = ChangeStream {
        _open: crate::metrics::Open::new(&node.metrics.watch_streams),
        node: node.clone(),
        caller,
        ns,
        bound_ms: bound.as_millis() as u64,
        last,
        credentials: CredentialsSeen::default(),
        pending: initial.into(),
        rx,
        ended: false,
        _slot: slot,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        s.next_frame()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), s))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    revision_header(&mut resp, last);
    Ok(resp)
}

/// The `snapshot` event of a namespace that no longer exists: empty, at `revision`.
fn deleted_snapshot_frame(ns: &str, cluster_id: &str, revision: u64) -> Bytes {
    let body: NamespaceSnapshot = NamespaceSnapshot {
        namespace: ns.to_string(),
        cluster_id: cluster_id.to_string(),
        revision,
        flags: Default::default(),
        segments: Default::default(),
    };
    sse_frame("snapshot", revision, &event_json(&body))
}

/// An event's data as JSON (the frames take a `Value`).
fn event_json(event: &impl serde::Serialize) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
}

/// A resume scans at most this many retained changes; one from further back gets the
/// namespace's snapshot instead (serialized once and shared, where a replay is per stream).
const MAX_RESUME_SCAN: usize = 4_096;

/// The retained changes after `since` (of every namespace), if the history still covers them
/// all and there are at most [`MAX_RESUME_SCAN`]. Under the state lock this is a binary search
/// and at most that many `Arc` clones; filtering and serializing happen after the lock.
fn changes_since(state: &StoreState, since: u64) -> Option<Vec<Arc<Change>>> {
    let history = state.history();
    let complete =
        since >= state.revision() || history.front().is_some_and(|c| c.revision <= since + 1);
    if !complete {
        return None;
    }
    let start = history.partition_point(|c| c.revision <= since);
    if history.len() - start > MAX_RESUME_SCAN {
        return None;
    }
    Some(history.range(start..).cloned().collect())
}

/// The `change` frames of `ns` among `changes`, built on the blocking pool.
async fn replay_frames(changes: Vec<Arc<Change>>, ns: String) -> Result<Vec<Bytes>, ApiError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || {
        changes
            .iter()
            .filter(|c| c.ns == ns)
            .map(|c| sse_frame("change", c.revision, &crate::watch_hub::change_json(c)))
            .collect()
    })
    .await
    .map_err(|_| ApiError::Unavailable("the resume could not be built".into()))
}

/// One watch stream's state between the frames it yields.
struct ChangeStream {
    node: Arc<Node>,
    caller: Caller,
    ns: String,
    bound_ms: u64,
    /// The revision this stream's client holds everything up to.
    last: u64,
    /// When the key was last checked (at the start, just now).
    credentials: CredentialsSeen,
    /// Frames decided but not yet yielded.
    pending: std::collections::VecDeque<Bytes>,
    rx: broadcast::Receiver<HubMessage>,
    /// Set once a closing frame (`stale`, `error`) is queued: the stream ends after it.
    ended: bool,
    _open: crate::metrics::Open,
    _slot: crate::watch_hub::StreamSlot,
}

impl ChangeStream {
    /// The next frame to send, or `None` when the stream ends: the node stops, the stream
    /// fell behind its hub channel (its client resumes from its last event id), the node
    /// can no longer prove its bound, or the key was revoked.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.node.metrics.events_sent.inc();
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            match self.rx.recv().await {
                Ok(HubMessage::Changes(frames)) => {
                    for (revision, frame) in frames.iter() {
                        if *revision > self.last {
                            self.pending.push_back(frame.clone());
                            self.last = *revision;
                        }
                    }
                }
                Ok(HubMessage::Reset) => self.resynchronise().await?,
                Ok(HubMessage::Tick(tick)) => self.on_tick(&tick),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.node.metrics.slow_subscribers.inc();
                    return None;
                }
                // The node is stopping: end the stream cleanly, so its client moves to
                // another node at once.
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// After a snapshot install: the namespace's snapshot (or an empty one if it is gone).
    async fn resynchronise(&mut self) -> Option<()> {
        let node = &self.node;
        let (snapshot, revision) = {
            let state = node.state.read();
            (node.snapshots.get(&state, &self.ns), state.revision())
        };
        match snapshot {
            Some(snap) => {
                let chunks = snap.sse_chunks(&self.ns, &node.cluster_id).await?;
                self.pending.extend(chunks.iter().cloned());
            }
            // Deleted: an empty snapshot says so without a gap.
            None => {
                self.pending
                    .push_back(deleted_snapshot_frame(&self.ns, &node.cluster_id, revision))
            }
        }
        self.last = self.last.max(revision);
        Some(())
    }

    fn on_tick(&mut self, tick: &Tick) {
        let (caller, node) = (&self.caller, &self.node);
        if self.credentials.revoked(tick, || caller.still_valid(node)) {
            let event = ErrorEvent {
                message: "the SDK key was revoked".into(),
            };
            self.close_with(sse_frame_no_id("error", &event_json(&event)));
            return;
        }
        if let Some(msg) = tick.stale_beyond(self.bound_ms) {
            let event = StaleEvent {
                revision: self.last,
                message: msg,
            };
            self.close_with(sse_frame_no_id("stale", &event_json(&event)));
            return;
        }
        // Only claim freshness once every applied change has been sent.
        if let Some(hb) = &tick.heartbeat {
            if tick.revision >= self.last {
                self.last = tick.revision;
                self.pending.push_back(hb.clone());
            }
        }
    }

    fn close_with(&mut self, frame: Bytes) {
        self.pending.push_back(frame);
        self.ended = true;
    }
}
