//! Cluster status and membership: `/v1/cluster…`.

use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

/// A member's part in the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Counts in the quorum.
    Voter,
    /// Receives the log, does not vote.
    Learner,
}

/// The Raft state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl NodeState {
    /// The name it is answered with, e.g. `leader`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Leader => "leader",
            NodeState::Follower => "follower",
            NodeState::Candidate => "candidate",
            NodeState::Learner => "learner",
            NodeState::Shutdown => "shutdown",
        }
    }
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    pub id: NodeId,
    pub api_addr: String,
    pub peer_addr: String,
    /// `voter` or `learner`.
    pub role: MemberRole,
    pub is_leader: bool,
    /// The last log index known replicated to it (on the leader only).
    pub matched_index: Option<u64>,
}

/// `GET /v1/cluster`: the answering node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: NodeState,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub revision: u64,
    /// On the leader: time since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Age of this node's current staleness proof, if it has one.
    pub staleness_ms: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// A member: its id and the addresses of its two listeners (the body of
/// `POST /v1/cluster/learners`, and each of `init`'s members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub id: NodeId,
    pub api_addr: String,
    pub peer_addr: String,
}

/// `POST /v1/cluster/init` body: the first membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    pub members: Vec<MemberSpec>,
}

/// `POST /v1/cluster/voters` body: the learner to promote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PromoteSpec {
    pub id: NodeId,
}

/// The answer to `POST /v1/cluster/init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Initialized {
    pub initialized: bool,
}

/// What a membership change made of its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MembershipRole {
    Learner,
    Voter,
    Removed,
}

/// A membership change, committed at `log_index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembershipChanged {
    /// The node added as a learner, promoted to voter or removed.
    pub id: NodeId,
    /// `learner`, `voter` or `removed`.
    pub role: MembershipRole,
    pub log_index: u64,
}
