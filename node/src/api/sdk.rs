//! The SDK API: a namespace snapshot to start from and a watch stream of its changes (SSE).
//! Readable with the namespace's SDK key or an admin token; bounded consistency by default.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flagstaff_api::sdk::NamespaceSnapshot;
use flagstaff_raft_store::{Change, State as StoreState};
use serde::Deserialize;
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
use crate::watch_hub::sse_frame;
use crate::watch_stream::{Start, WatchStream};

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

    // The stream is the answer: written by a writer shard on a connection taken over from
    // hyper, else the body hyper polls (`WatchStream::served`). The slot is held, and the
    // stream counted open, as long as the stream lives (until its client goes away).
    let stream = WatchStream::new(Start {
        node: node.clone(),
        caller,
        ns,
        bound_ms: bound.as_millis() as u64,
        last,
        initial,
        rx,
        slot,
    });
    let (body, take_over) = stream.served();
    let mut resp = Response::new(body);
    resp.extensions_mut().insert(take_over);
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

/// Whether a request path is a watch stream's (`/v1/namespaces/{ns}/watch`): the client
/// listener answers those itself when they open a connection, so that the stream can leave
/// hyper for a writer shard (`takeover.rs`, `watch_writer.rs`).
pub fn is_watch_path(path: &str) -> bool {
    path.strip_prefix("/v1/namespaces/")
        .and_then(|rest| rest.strip_suffix("/watch"))
        .is_some_and(|ns| !ns.is_empty() && !ns.contains('/'))
}
