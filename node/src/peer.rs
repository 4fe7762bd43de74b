//! The peer protocol: postcard bodies (with the format-version byte) over HTTP POST on the peer
//! listener, authenticated by the cluster secret and checked against the cluster id.

use std::time::Duration;

use flagstaff_raft_store::codec;
use flagstaff_raft_store::{CommandResult, Envelope, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub const PATH_READ_INDEX: &str = "/raft/read-index";
pub const PATH_FORWARD: &str = "/raft/forward";
/// A member's own view of itself, for the console's cluster page.
pub const PATH_STATUS: &str = "/raft/status";

/// Header carrying the cluster id on every peer request; a node from another cluster is refused.
pub const CLUSTER_HEADER: &str = "flagstaff-cluster";

/// Answer to `POST /raft/read-index`: the leader's quorum-confirmed read log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndexReply {
    pub index: u64,
}

/// Answer to `POST /raft/status`: how a member sees itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub applied_index: Option<u64>,
    pub revision: u64,
    /// What `/readyz` would answer: a leader is known and this member has caught up.
    pub ready: bool,
}

/// Writes forwarded from a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub envelopes: Vec<Envelope>,
}

/// Why the leader did not run forwarded writes or a read-index round.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum PeerRefusal {
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Unavailable(String),
}

pub type ForwardReply = Result<Vec<CommandResult>, PeerRefusal>;
pub type ReadIndexResult = Result<ReadIndexReply, PeerRefusal>;

/// A failed peer call, split by whether the request may have reached the other node.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The connection was never established: the request was not sent.
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("peer answered {0}: {1}")]
    Status(u16, String),
    #[error("decoding peer answer: {0}")]
    Decode(String),
}

impl PeerCallError {
    /// True when the request certainly did not reach the peer.
    pub fn never_sent(&self) -> bool {
        matches!(self, PeerCallError::Connect(..))
    }
}

/// HTTP client for the peer protocol. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: String,
    cluster_id: String,
}

impl PeerClient {
    pub fn new(secret: String, cluster_id: String, source_ip: Option<std::net::IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            .local_address(source_ip)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            http,
            secret,
            cluster_id,
        }
    }

    /// POSTs `req` to `base` + `path` and decodes the answer, within `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        let body = codec::encode(req).map_err(|e| PeerCallError::Transport(e.to_string()))?;
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let send = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .header(CLUSTER_HEADER, &self.cluster_id)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .timeout(timeout)
            .send();
        let resp = send.await.map_err(|e| classify(&url, e, timeout))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(&url, e, timeout))?;
        if !status.is_success() {
            return Err(PeerCallError::Status(
                status.as_u16(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        codec::decode(&bytes).map_err(|e| PeerCallError::Decode(e.to_string()))
    }
}

fn classify(url: &str, e: reqwest::Error, timeout: Duration) -> PeerCallError {
    if e.is_connect() {
        PeerCallError::Connect(url.to_string(), e.to_string())
    } else if e.is_timeout() {
        PeerCallError::Timeout(timeout)
    } else {
        PeerCallError::Transport(e.to_string())
    }
}
