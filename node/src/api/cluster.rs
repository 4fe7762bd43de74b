//! Cluster operations: status, initialisation, membership, health.
//!
//! Membership changes run on the leader; a follower passes the request on to the leader's client
//! listener and relays the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flagstaff_api::cluster::{
    ClusterStatus, InitSpec, Initialized, MemberRole, MemberSpec, MemberStatus, MembershipChanged,
    MembershipRole, PromoteSpec,
};
use flagstaff_raft_store::{Member, NodeId};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::ChangeMembers;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::Admin;
use crate::auth::bearer;
use crate::error::{ApiError, ErrorBody};
use crate::node::Node;

/// A learner may be promoted only when its log is at most this many entries behind the leader.
const PROMOTE_MAX_LAG: u64 = 16;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(backup))
        .routes(routes!(status))
        .routes(routes!(init))
        .routes(routes!(add_learner))
        .routes(routes!(promote))
        .routes(routes!(remove_member))
}

/// Process alive and its store usable.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the process is alive", body = String, content_type = "text/plain"),
        (status = 503, description = "the Raft core stopped on a fatal error (a failed disk): the process exits", body = ErrorBody)))]
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    match node.fatal_error() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(e) => ApiError::Unavailable(format!("this node stopped on a fatal error: {e}"))
            .into_response(),
    }
}

/// In a cluster with a known leader, and caught up.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "ready", body = String, content_type = "text/plain"),
    (status = 503, description = "no known leader, or not caught up", body = ErrorBody)))]
async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::Unavailable("not ready: no known leader or not caught up".into()).into_response()
    }
}

/// The node's Prometheus metrics, unauthenticated (as etcd's and Consul's agents serve theirs):
/// they carry counts, sizes and timings, and flag keys and variant names in
/// `flagstaff_evaluations_total` (`--metrics-max-evaluation-series 0` leaves those out).
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "every metric of this node, OpenMetrics text format",
        body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.render_metrics(),
    )
        .into_response()
}

/// A backup of the whole state (namespaces, flags, segments, SDK keys and admin tokens as
/// hashes, the retained history) at one revision, after a linearizable read barrier: it holds
/// every write acknowledged before the request. Any node answers. The body is the backup file
/// (`flagstaff backup save` writes it; `flagstaff backup restore` seeds a new cluster from it).
#[utoipa::path(get, path = "/v1/cluster/backup", tag = "cluster", security(("bearer" = [])),
    responses((status = 200, description = "the backup file: header, cluster id, revision, state, SHA-256",
        content_type = "application/octet-stream", body = Vec<u8>)))]
async fn backup(State(node): State<Arc<Node>>, _: Admin) -> Result<Response, ApiError> {
    node.read_barrier(crate::node::Consistency::Linearizable, None)
        .await?;
    let (state, cluster_id) = (node.state.clone(), node.cluster_id.clone());
    // Encoding the whole state is work in proportion to its size: off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let backup = flagstaff_raft_store::backup::Backup::of(
            &state.read(),
            &cluster_id,
            crate::clock::wall_ms(),
        )?;
        Ok::<_, flagstaff_raft_store::codec::CodecError>((backup.revision, backup.to_bytes()?))
    })
    .await;
    let (revision, bytes) = match encoded {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(ApiError::Unavailable(format!("encoding the backup: {e}"))),
        Err(_) => {
            return Err(ApiError::Unavailable(
                "the backup could not be built".into(),
            ))
        }
    };
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response();
    crate::api::revision_header(&mut resp, revision);
    Ok(resp)
}

/// Members, roles, leader, term, applied index, revision and staleness proof.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", security(("bearer" = [])),
    responses((status = 200, description = "this node's view", body = ClusterStatus)))]
async fn status(State(node): State<Arc<Node>>, _: Admin) -> Json<ClusterStatus> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let matched: BTreeMap<NodeId, Option<u64>> = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
        .unwrap_or_default();
    let members = membership
        .nodes()
        .map(|(id, member)| MemberStatus {
            id: *id,
            api_addr: member.api_addr.clone(),
            peer_addr: member.peer_addr.clone(),
            role: if voters.contains(id) {
                MemberRole::Voter
            } else {
                MemberRole::Learner
            },
            is_leader: m.current_leader == Some(*id),
            matched_index: matched.get(id).copied().flatten(),
        })
        .collect();
    let state = crate::node::node_state(m.state);
    Json(ClusterStatus {
        cluster_id: node.cluster_id.clone(),
        node_id: node.id,
        state,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        revision: node.state.applied().revision,
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        staleness_ms: node.proofs.staleness_ms(),
        members,
    })
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

/// The first membership of a brand-new cluster, on one node (409 once initialised).
#[utoipa::path(post, path = "/v1/cluster/init", tag = "cluster", security(("bearer" = [])),
    request_body = InitSpec,
    responses((status = 200, description = "initialised", body = Initialized)))]
async fn init(
    State(node): State<Arc<Node>>,
    _: Admin,
    body: Bytes,
) -> Result<Json<Initialized>, ApiError> {
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
        Ok(()) => Ok(Json(Initialized { initialized: true })),
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(ApiError::Conflict(
            format!("cluster is already initialized: {e}"),
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// A membership request as it came, to be run on the leader: here when this node leads, else
/// relayed to the leader's client listener unchanged, its answer passed back.
struct LeaderRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for LeaderRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (method, uri, headers) = (
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        );
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("body: {}", e.body_text())))?;
        Ok(LeaderRequest {
            method,
            uri,
            headers,
            body,
        })
    }
}

impl LeaderRequest {
    /// The JSON body as `T` (400 naming the fault).
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse(&self.body)
    }

    /// Runs `change` if this node leads, else relays the request to the leader; `change`
    /// answers the membership change it made as `(id, role, log index)`.
    async fn on_leader<Fut>(self, node: &Node, change: impl FnOnce() -> Fut) -> Response
    where
        Fut: std::future::Future<Output = Result<(NodeId, MembershipRole, u64), ApiError>>,
    {
        // A membership change is a proposal too: it waits for a leadership hand-over, and a
        // hand-over for it (`crate::hand_over`).
        let pass = match node.leader() {
            Some((id, _)) if id == node.id => node.enter_as_leader().await,
            _ => None,
        };
        match (pass, node.leader()) {
            (Some(_pass), _) => match change().await {
                Ok((id, role, log_index)) => Json(MembershipChanged {
                    id,
                    role,
                    log_index,
                })
                .into_response(),
                Err(e) => e.into_response(),
            },
            (None, Some((id, member))) if id != node.id => self.relay(node, &member.api_addr).await,
            (None, _) => ApiError::NoLeader.into_response(),
        }
    }

    async fn relay(self, node: &Node, base: &str) -> Response {
        let url = format!("{}{}", base.trim_end_matches('/'), self.uri.path());
        let mut req = node
            .peers
            .api_http()
            .request(self.method, &url)
            .body(self.body)
            .timeout(node.config.write_timeout);
        if let Some(token) = bearer(&self.headers) {
            req = req.bearer_auth(token);
        }
        relayed(req).await
    }
}

/// The leader's answer to a relayed request, or why there is none.
async fn relayed(req: reqwest::RequestBuilder) -> Response {
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

/// How long a new member has to answer `POST /raft/identify`.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);

/// Two advertised URLs name the same listener (a trailing `/` and the case of the scheme and
/// host aside).
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Checks that `member` is a node of this cluster with id `id`, listening where it is said to,
/// before anything carrying the cluster secret is sent to it.
///
/// The leader sends a fresh random nonce to `POST /raft/identify` at `peer_addr`, with no
/// credential, and the node answers with its cluster id, node id and advertised addresses and
/// an HMAC of them and the nonce keyed by the cluster secret
/// (`crate::peer::identity_proof`). A node of this cluster knows the secret, so it can answer;
/// a stranger cannot, and never sees the secret, since it does not travel. An identity
/// endpoint returning only the node and cluster id would not do: both are public (every
/// client-listener answer carries them), so an impostor could echo them, be added, and then
/// receive the secret with the first append. A genuine node reached through an impostor's
/// address (a relay) answers with its own addresses, which then do not match.
async fn verify_new_member(node: &Node, id: NodeId, member: &Member) -> Result<(), ApiError> {
    use rand::RngCore;
    let peer = member.peer_addr.as_str();
    let mut nonce = [0u8; crate::peer::IDENTIFY_NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    let reply = node
        .peers
        .identify(peer, &nonce, IDENTIFY_TIMEOUT)
        .await
        .map_err(|e| {
            let why = match e {
                crate::peer::PeerCallError::Status(404, _) => {
                    "answered 404: not a Flagstaff peer listener of this version".to_string()
                }
                crate::peer::PeerCallError::Status(s, body) => format!("answered {s}: {body}"),
                other => other.to_string(),
            };
            ApiError::bad_request(format!(
                "peer_addr: {peer:?} did not prove it is a node of this cluster ({why}); \
                 start the new node with this cluster's id and secret, then add it"
            ))
        })?;
    if reply.cluster_id != node.cluster_id {
        return Err(ApiError::bad_request(format!(
            "peer_addr: the node at {peer:?} says it belongs to cluster {:?}, not {:?}",
            reply.cluster_id, node.cluster_id
        )));
    }
    if reply.node_id != id {
        return Err(ApiError::bad_request(format!(
            "peer_addr: the node at {peer:?} says it is node {}, not {id}",
            reply.node_id
        )));
    }
    if !same_url(&reply.peer_addr, peer) {
        return Err(ApiError::bad_request(format!(
            "peer_addr: the node answering at {peer:?} advertises its peer listener as {:?}; \
             give the address it advertises (--advertise-peer)",
            reply.peer_addr
        )));
    }
    if !same_url(&reply.api_addr, &member.api_addr) {
        return Err(ApiError::bad_request(format!(
            "api_addr: node {id} advertises its client listener as {:?}, not {:?} \
             (--advertise-client)",
            reply.api_addr, member.api_addr
        )));
    }
    let expected = crate::peer::identity_proof(
        &node.config.cluster_secret,
        &node.cluster_id,
        id,
        &reply.api_addr,
        &reply.peer_addr,
        &nonce,
    );
    use subtle::ConstantTimeEq;
    if !bool::from(expected.as_slice().ct_eq(&reply.proof)) {
        return Err(ApiError::bad_request(format!(
            "peer_addr: the node at {peer:?} could not prove it holds this cluster's secret"
        )));
    }
    Ok(())
}

/// Add a non-voting learner; it catches up and serves bounded reads. The new node must be
/// running: it first proves, without the cluster secret travelling, that it is node `id` of
/// this cluster at `api_addr` and `peer_addr` (else 400 naming the field).
#[utoipa::path(post, path = "/v1/cluster/learners", tag = "cluster", security(("bearer" = [])),
    request_body = MemberSpec,
    responses((status = 200, description = "added", body = MembershipChanged)))]
async fn add_learner(
    State(node): State<Arc<Node>>,
    _: Admin,
    req: LeaderRequest,
) -> Result<Response, ApiError> {
    let spec: MemberSpec = req.json()?;
    let n = node.clone();
    Ok(req
        .on_leader(&node, || async move {
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
            // Before the leader sends it anything carrying the cluster secret.
            verify_new_member(&n, spec.id, &member).await?;
            let resp = n
                .raft
                .add_learner(spec.id, member, false)
                .await
                .map_err(membership_error)?;
            Ok((spec.id, MembershipRole::Learner, resp.log_id.index))
        })
        .await)
}

/// Promote a learner that is at most 16 entries behind to voter.
#[utoipa::path(post, path = "/v1/cluster/voters", tag = "cluster", security(("bearer" = [])),
    request_body = PromoteSpec,
    responses((status = 200, description = "promoted", body = MembershipChanged)))]
async fn promote(
    State(node): State<Arc<Node>>,
    _: Admin,
    req: LeaderRequest,
) -> Result<Response, ApiError> {
    let spec: PromoteSpec = req.json()?;
    let n = node.clone();
    Ok(req
        .on_leader(&node, || async move {
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
            Ok((spec.id, MembershipRole::Voter, resp.log_id.index))
        })
        .await)
}

/// Remove a voter or learner.
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", security(("bearer" = [])),
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, description = "removed", body = MembershipChanged)))]
async fn remove_member(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<NodeId>, PathRejection>,
    req: LeaderRequest,
) -> Result<Response, ApiError> {
    let Path(id) = p.map_err(|e| ApiError::bad_request(format!("id: {}", e.body_text())))?;
    let n = node.clone();
    Ok(req
        .on_leader(&node, || async move {
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
            Ok((id, MembershipRole::Removed, resp.log_id.index))
        })
        .await)
}
