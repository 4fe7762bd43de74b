//! Cluster operations: status, initialisation, membership, health.
//!
//! Membership changes run on the leader; a follower passes the request on to the leader's client
//! listener and relays the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use flagstaff_raft_store::{Member, NodeId};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::extract::{bearer, Admin};
use crate::error::ApiError;
use crate::node::Node;

/// A learner may be promoted only when its log is at most this many entries behind the leader.
const PROMOTE_MAX_LAG: u64 = 16;

pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/init", post(init))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters", post(promote))
        .route("/v1/cluster/members/{id}", delete(remove_member))
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let leader = node.raft.metrics().borrow().current_leader;
    if leader.is_some() && node.caught_up() {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::Unavailable("not ready: no known leader or not caught up".into()).into_response()
    }
}

async fn status(State(node): State<Arc<Node>>, _: Admin) -> Json<Value> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let matched: BTreeMap<NodeId, Option<u64>> = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
        .unwrap_or_default();
    let members: Vec<Value> = membership
        .nodes()
        .map(|(id, member)| {
            json!({
                "id": id,
                "api_addr": member.api_addr,
                "peer_addr": member.peer_addr,
                "role": if voters.contains(id) { "voter" } else { "learner" },
                "is_leader": m.current_leader == Some(*id),
                "matched_index": matched.get(id).copied().flatten(),
            })
        })
        .collect();
    let state = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    Json(json!({
        "cluster_id": node.cluster_id,
        "node_id": node.id,
        "state": state,
        "leader": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "applied_index": m.last_applied.map(|l| l.index),
        "revision": node.state.applied().revision,
        "millis_since_quorum_ack": m.millis_since_quorum_ack,
        "staleness_ms": node.proofs.staleness_ms(),
        "members": members,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSpec {
    id: NodeId,
    api_addr: String,
    peer_addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitSpec {
    members: Vec<MemberSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteSpec {
    id: NodeId,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ApiError::Conflict(c.to_string())
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ApiError::NoLeader,
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// `POST /v1/cluster/init`: the first membership of a brand-new cluster, on one node.
async fn init(
    State(node): State<Arc<Node>>,
    _: Admin,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let spec: InitSpec = parse(&body)?;
    if spec.members.is_empty() {
        return Err(ApiError::bad_request(
            "members: at least one member is required",
        ));
    }
    let members: BTreeMap<NodeId, Member> = spec
        .members
        .into_iter()
        .map(|m| {
            (
                m.id,
                Member {
                    api_addr: m.api_addr,
                    peer_addr: m.peer_addr,
                },
            )
        })
        .collect();
    if !members.contains_key(&node.id) {
        return Err(ApiError::bad_request(format!(
            "members: must include this node ({})",
            node.id
        )));
    }
    match node.raft.initialize(members).await {
        Ok(()) => Ok(Json(json!({"initialized": true}))),
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(ApiError::Conflict(
            format!("cluster is already initialized: {e}"),
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// Runs `f` on the leader: here if this node leads, else by relaying the HTTP request.
async fn on_leader<F, Fut>(
    node: &Node,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    f: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Json<Value>, ApiError>>,
{
    match node.leader() {
        Some((id, _)) if id == node.id => match f().await {
            Ok(j) => j.into_response(),
            Err(e) => e.into_response(),
        },
        Some((_, member)) => relay(node, method, &member.api_addr, uri, headers, body).await,
        None => ApiError::NoLeader.into_response(),
    }
}

async fn relay(
    node: &Node,
    method: Method,
    base: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("{}{}", base.trim_end_matches('/'), uri.path());
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, &url)
        .body(body)
        .timeout(node.config.write_timeout);
    if let Some(token) = bearer(headers) {
        req = req.bearer_auth(token);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            match resp.bytes().await {
                Ok(bytes) => {
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    (status, Json(value)).into_response()
                }
                Err(_) => ApiError::OutcomeUnknown.into_response(),
            }
        }
        Err(e) if e.is_connect() => ApiError::NoLeader.into_response(),
        Err(_) => ApiError::OutcomeUnknown.into_response(),
    }
}

async fn add_learner(
    State(node): State<Arc<Node>>,
    _: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: MemberSpec = parse(&body)?;
    let n = node.clone();
    Ok(
        on_leader(&node, method, &uri, &headers, body, || async move {
            let member = Member {
                api_addr: spec.api_addr,
                peer_addr: spec.peer_addr,
            };
            if n.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&spec.id)
                .is_some()
            {
                return Err(ApiError::Conflict(format!(
                    "node {} is already a member",
                    spec.id
                )));
            }
            let resp = n
                .raft
                .add_learner(spec.id, member, false)
                .await
                .map_err(membership_error)?;
            Ok(Json(
                json!({"added": spec.id, "role": "learner", "log_index": resp.log_id.index}),
            ))
        })
        .await,
    )
}

async fn promote(
    State(node): State<Arc<Node>>,
    _: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: PromoteSpec = parse(&body)?;
    let n = node.clone();
    Ok(
        on_leader(&node, method, &uri, &headers, body, || async move {
            let m = n.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            if membership.get_node(&spec.id).is_none() {
                return Err(ApiError::NotFound(format!(
                    "node {} is not a member; add it as a learner first",
                    spec.id
                )));
            }
            if membership.voter_ids().any(|v| v == spec.id) {
                return Err(ApiError::Conflict(format!(
                    "node {} is already a voter",
                    spec.id
                )));
            }
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&spec.id).copied().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if last.saturating_sub(matched) > PROMOTE_MAX_LAG {
                return Err(ApiError::Conflict(format!(
                    "learner {} is {} entries behind the leader; promote it once it has caught up",
                    spec.id,
                    last - matched
                )));
            }
            let ids: BTreeSet<NodeId> = [spec.id].into();
            let resp = n
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map_err(membership_error)?;
            Ok(Json(
                json!({"promoted": spec.id, "log_index": resp.log_id.index}),
            ))
        })
        .await,
    )
}

async fn remove_member(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<NodeId>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(id) = p.map_err(|e| ApiError::bad_request(format!("id: {}", e.body_text())))?;
    let n = node.clone();
    Ok(
        on_leader(&node, method, &uri, &headers, Bytes::new(), || async move {
            let m = n.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            if membership.get_node(&id).is_none() {
                return Err(ApiError::NotFound(format!("node {id} is not a member")));
            }
            let ids: BTreeSet<NodeId> = [id].into();
            let change = if membership.voter_ids().any(|v| v == id) {
                ChangeMembers::RemoveVoters(ids)
            } else {
                ChangeMembers::RemoveNodes(ids)
            };
            let resp = tokio::time::timeout(
                Duration::from_secs(10),
                n.raft.change_membership(change, false),
            )
            .await
            .map_err(|_| ApiError::OutcomeUnknown)?
            .map_err(membership_error)?;
            Ok(Json(json!({"removed": id, "log_index": resp.log_id.index})))
        })
        .await,
    )
}
