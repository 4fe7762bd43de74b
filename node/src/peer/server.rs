//! The peer listener: raft RPC, read index and write forwarding. Only nodes that present the
//! cluster secret and the same cluster id are served, except `POST /raft/identify`, where a
//! node proves to anyone asking that it holds the secret, without revealing it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use flagstaff_raft_store::codec;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use flagstaff_raft_store::{NodeId, TypeConfig};

use crate::auth::bearer;
use crate::node::{Node, Proposed};
use crate::peer::{
    identity_proof, ForwardReply, ForwardRequest, IdentifyReply, IdentifyRequest, PeerRefusal,
    ReadIndexReply, ReadIndexResult, CLUSTER_HEADER, IDENTIFY_NONCE_BYTES, PATH_APPEND, PATH_ELECT,
    PATH_FORWARD, PATH_IDENTIFY, PATH_READ_INDEX, PATH_SNAPSHOT, PATH_STATUS, PATH_VOTE,
};

/// Largest peer request body accepted (an append of many batched entries or a snapshot chunk).
pub const PEER_BODY_LIMIT: usize = 256 << 20;

/// Largest `POST /raft/identify` body, the only one accepted without the cluster secret.
const IDENTIFY_BODY_LIMIT: usize = 1024;

pub fn peer_router(node: Arc<Node>) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .route(PATH_READ_INDEX, post(read_index))
        .route(PATH_FORWARD, post(forward))
        .route(PATH_STATUS, post(status))
        .route(PATH_ELECT, post(elect))
        // Only authenticated peers get here; axum's 2 MB default would refuse the append of a
        // lagging follower (hundreds of batched entries) and every snapshot chunk over 2 MB,
        // so that follower could never catch up.
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        // Added after the authentication layer, so served to anyone: it reveals nothing but
        // an HMAC (`identity_proof`), and takes only a nonce.
        .route(
            PATH_IDENTIFY,
            post(identify).layer(DefaultBodyLimit::max(IDENTIFY_BODY_LIMIT)),
        )
        .with_state(node)
}

async fn authenticate(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let secret_ok = bearer(req.headers())
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(node.config.cluster_secret.as_bytes())));
    if !secret_ok {
        return (StatusCode::UNAUTHORIZED, "cluster secret missing or wrong").into_response();
    }
    let cluster = req
        .headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if cluster != node.cluster_id {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "this node belongs to cluster {}, not {cluster:?}",
                node.cluster_id
            ),
        )
            .into_response();
    }
    next.run(req).await
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    codec::decode(body).map_err(|e| format!("undecodable peer request: {e}"))
}

fn refuse(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

fn encode<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    encode(&node.raft.append_entries(req).await)
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: VoteRequest<NodeId> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    encode(&node.raft.vote(req).await)
}

async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    encode(&node.raft.install_snapshot(req).await)
}

async fn read_index(State(node): State<Arc<Node>>) -> Response {
    let result: ReadIndexResult = node
        .read_index
        .read_index()
        .await
        .map(|index| ReadIndexReply { index });
    encode(&result)
}

/// `POST /raft/identify`: proves to a leader about to add this node that it holds the cluster
/// secret, and says which cluster, id and addresses it has, without the secret travelling
/// either way (`crate::peer::identity_proof`).
async fn identify(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: IdentifyRequest = match decode(&body) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    if req.nonce.len() != IDENTIFY_NONCE_BYTES {
        return refuse(format!(
            "nonce: must be {IDENTIFY_NONCE_BYTES} bytes, got {}",
            req.nonce.len()
        ));
    }
    let (api_addr, peer_addr) = (&node.config.advertise_api, &node.config.advertise_peer);
    let proof = identity_proof(
        &node.config.cluster_secret,
        &node.cluster_id,
        node.id,
        api_addr,
        peer_addr,
        &req.nonce,
    );
    encode(&IdentifyReply {
        cluster_id: node.cluster_id.clone(),
        node_id: node.id,
        api_addr: api_addr.clone(),
        peer_addr: peer_addr.clone(),
        proof: proof.to_vec(),
    })
}

/// `POST /raft/elect`: a stopping leader asks this voter to campaign (`crate::hand_over`).
async fn elect(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => encode(&node.campaign(req).await),
        Err(e) => refuse(e),
    }
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    encode(&node.member_view())
}

async fn forward(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: ForwardRequest = match decode(&body) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    // Only the leader proposes; a node that is not the leader says so, and the sender retries.
    let deadline = tokio::time::Instant::now() + node.config.write_timeout;
    let reply: ForwardReply = match node.propose_as_leader(req.envelopes, deadline).await {
        Proposed::Answered(r) => r,
        Proposed::NotLeader => Err(PeerRefusal::NotLeader {
            leader: node.raft.metrics().borrow().current_leader,
        }),
        Proposed::HeldAtGate => Err(PeerRefusal::Unavailable(
            "a leadership hand-over outlasted the write's deadline".into(),
        )),
        Proposed::NotCommitted => Err(PeerRefusal::Unavailable(
            "commit timed out on the leader".into(),
        )),
    };
    encode(&reply)
}
