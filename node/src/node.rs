//! A running node: Raft, the applied state, and the write and read paths the HTTP API uses.

use std::sync::Arc;
use std::time::Duration;

use flagstaff_api::cluster::NodeState;
use flagstaff_raft_store::{CommandResult, Envelope, Member, NodeId, Raft, StateHandle};
use tokio::time::Instant;

use crate::bounded_read::Proofs;
use crate::clock::boottime_us;
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::flag_sets::FlagSetCache;
use crate::peer::{
    ForwardReply, ForwardRequest, PeerClient, PeerRefusal, ReadIndexResult, PATH_FORWARD,
    PATH_READ_INDEX,
};
use crate::proposer::{ProposalPass, Proposer};
use crate::rate_limit::RateLimiter;
use crate::read_index::ReadIndexCoalescer;
use crate::watch_hub::WatchHub;

/// Everything the handlers share. Held in an `Arc`.
pub struct Node {
    pub id: NodeId,
    pub cluster_id: String,
    pub config: NodeConfig,
    pub raft: Raft,
    pub state: StateHandle,
    pub proofs: Arc<Proofs>,
    pub(crate) proposer: Proposer,
    /// Every proposal on this node (writes, membership changes) holds it shared until its entry
    /// is committed or refused; a leadership hand-over holds it alone, so that no entry is
    /// appended while the next leader catches up and campaigns ([`crate::hand_over`]).
    pub(crate) proposal_gate: Arc<tokio::sync::RwLock<()>>,
    pub(crate) read_index: ReadIndexCoalescer,
    pub(crate) peers: PeerClient,
    pub(crate) hub: WatchHub,
    pub(crate) flag_sets: FlagSetCache,
    /// A/B test events waiting for the next flush ([`crate::event_intake`]).
    pub(crate) events: crate::event_intake::EventIntake,
    pub(crate) rate_limits: RateLimiter,
    pub(crate) watch_streams: crate::watch_hub::StreamSlots,
    /// Paces the starts of watch streams and snapshot requests.
    pub(crate) sdk_admission: crate::rate_limit::Pacer,
    pub(crate) snapshots: crate::snapshot_cache::SnapshotCache,
    /// What the request paths count and time ([`crate::metrics`]).
    pub metrics: crate::metrics::Metrics,
    /// Every series of this node, as `GET /metrics` writes them.
    pub(crate) registry: prometheus_client::registry::Registry,
}

/// What [`Node::propose_as_leader`] came to.
pub(crate) enum Proposed {
    /// The proposer's answer: results, or a refusal.
    Answered(crate::proposer::ProposeResult),
    /// This node no longer leads once the gate opened: never proposed.
    NotLeader,
    /// The deadline passed at the gate (a hand-over): never proposed.
    HeldAtGate,
    /// The deadline passed after it was proposed: it may still commit.
    NotCommitted,
}

/// How a read must relate to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Quorum-confirmed read index, then wait until applied.
    Linearizable,
    /// Reflects every write acknowledged before `now - bound`.
    Bounded(Duration),
}

/// What a read was allowed to see, for the response headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadProof {
    pub staleness_ms: Option<u64>,
}

impl Node {
    /// The leader as this node currently believes, with its addresses.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, member))
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Leave to propose as the leader, once any hand-over under way is over; `None` when this
    /// node no longer leads by then (the caller looks the leader up again). Held until the
    /// proposal is committed or refused.
    pub(crate) async fn enter_as_leader(&self) -> Option<ProposalPass> {
        let pass = self.proposal_gate.clone().read_owned().await;
        self.is_leader().then_some(pass)
    }

    /// Proposes `envelopes` as the leader by `deadline`: first through the gate (after any
    /// hand-over under way), then to the proposer.
    pub(crate) async fn propose_as_leader(
        &self,
        envelopes: Vec<Envelope>,
        deadline: Instant,
    ) -> Proposed {
        let Ok(pass) = tokio::time::timeout_at(deadline, self.enter_as_leader()).await else {
            return Proposed::HeldAtGate;
        };
        let Some(pass) = pass else {
            return Proposed::NotLeader;
        };
        match tokio::time::timeout_at(deadline, self.proposer.propose(envelopes, pass)).await {
            Ok(r) => Proposed::Answered(r),
            Err(_) => Proposed::NotCommitted,
        }
    }

    /// Waits (at most `cap`) for the Raft metrics to change, e.g. a new leader.
    async fn metrics_changed(&self, cap: Duration) {
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(cap, rx.changed()).await;
    }

    /// Runs one request's commands through the leader, forwarding when this node is not it.
    ///
    /// Every envelope must carry an idempotency key (the HTTP layer adds one), which makes
    /// resending after a lost answer or a leader change safe. Answers 503 `NO_LEADER` when no
    /// attempt ever left this node, 504 `OUTCOME_UNKNOWN` when one did and the deadline passed.
    pub async fn write(&self, envelopes: Vec<Envelope>) -> Result<Vec<CommandResult>, ApiError> {
        let started = Instant::now();
        let written = self.write_through_leader(envelopes).await;
        let outcome = match &written {
            Ok(_) => "committed",
            Err(ApiError::NoLeader) => "no_leader",
            Err(_) => "outcome_unknown",
        };
        self.metrics.write_done(outcome, started.elapsed());
        written
    }

    async fn write_through_leader(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<CommandResult>, ApiError> {
        let deadline = Instant::now() + self.config.write_timeout;
        let mut maybe_sent = false;
        while Instant::now() < deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id => {
                    match self.propose_as_leader(envelopes.clone(), deadline).await {
                        Proposed::Answered(r) => {
                            maybe_sent = true;
                            r
                        }
                        // Leadership was handed over while this write waited: send it there.
                        Proposed::NotLeader => continue,
                        Proposed::HeldAtGate => break,
                        Proposed::NotCommitted => {
                            maybe_sent = true;
                            break;
                        }
                    }
                }
                Some((_, member)) => {
                    let req = ForwardRequest {
                        envelopes: envelopes.clone(),
                    };
                    match self
                        .peers
                        .call::<_, ForwardReply>(&member.peer_addr, PATH_FORWARD, &req, remaining)
                        .await
                    {
                        Ok(r) => {
                            maybe_sent = true;
                            r
                        }
                        Err(e) => {
                            maybe_sent |= !e.never_sent();
                            tracing::debug!(error = %e, "forwarding write failed");
                            Err(PeerRefusal::Unavailable(e.to_string()))
                        }
                    }
                }
                None => Err(PeerRefusal::NotLeader { leader: None }),
            };
            match attempt {
                Ok(results) => return Ok(results),
                Err(refusal) => {
                    tracing::debug!(%refusal, "write attempt refused; waiting for leadership to settle");
                    self.metrics_changed(Duration::from_millis(100).min(remaining))
                        .await;
                }
            }
        }
        Err(if maybe_sent {
            ApiError::OutcomeUnknown
        } else {
            ApiError::NoLeader
        })
    }

    /// The quorum-confirmed read index, from this node if it leads or from the leader.
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, ApiError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no leader is known");
        while Instant::now() < deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt: ReadIndexResult = match self.leader() {
                Some((id, _)) if id == self.id => self
                    .read_index
                    .read_index()
                    .await
                    .map(|index| crate::peer::ReadIndexReply { index }),
                Some((_, member)) => self
                    .peers
                    .call::<_, ReadIndexResult>(&member.peer_addr, PATH_READ_INDEX, &(), remaining)
                    .await
                    .unwrap_or_else(|e| Err(PeerRefusal::Unavailable(e.to_string()))),
                None => Err(PeerRefusal::NotLeader { leader: None }),
            };
            match attempt {
                Ok(reply) => return Ok(reply.index),
                Err(refusal) => {
                    last = refusal.to_string();
                    self.metrics_changed(Duration::from_millis(50).min(remaining))
                        .await;
                }
            }
        }
        Err(ApiError::Unavailable(format!(
            "cannot confirm a read index with a quorum: {last}"
        )))
    }

    /// Waits until this node has applied log index `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.state.subscribe();
        let ok = tokio::time::timeout(timeout, rx.wait_for(|v| v.log_index >= index)).await;
        match ok {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::StaleReplica(format!(
                "did not apply log index {index} within {timeout:?}"
            ))),
        }
    }

    /// Waits until this node has applied cluster revision `revision` (`min_revision`).
    pub async fn wait_revision(&self, revision: u64) -> Result<(), ApiError> {
        let timeout = self.config.read_timeout;
        let mut rx = self.state.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|v| v.revision >= revision)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::StaleReplica(format!(
                "this node has not reached revision {revision} within {timeout:?}; try another node"
            ))),
        }
    }

    /// Makes the local state safe to read under `consistency` (and `min_revision`).
    pub async fn read_barrier(
        &self,
        consistency: Consistency,
        min_revision: Option<u64>,
    ) -> Result<ReadProof, ApiError> {
        let started = Instant::now();
        let proof = self.wait_readable(consistency, min_revision).await;
        let label = match consistency {
            Consistency::Linearizable => "linearizable",
            Consistency::Bounded(_) => "bounded",
        };
        self.metrics.read_barrier_done(label, started.elapsed());
        if let Err(ApiError::StaleReplica(_)) = &proof {
            self.metrics.stale_replica.inc();
        }
        proof
    }

    async fn wait_readable(
        &self,
        consistency: Consistency,
        min_revision: Option<u64>,
    ) -> Result<ReadProof, ApiError> {
        if let Some(rev) = min_revision {
            self.wait_revision(rev).await?;
        }
        match consistency {
            // Deliberate break, test builds only (see fault_injection.rs).
            Consistency::Linearizable if crate::fault_injection::local_linearizable_reads() => {
                Ok(ReadProof { staleness_ms: None })
            }
            Consistency::Linearizable => {
                let index = self.read_index(self.config.read_timeout).await?;
                self.wait_applied(index, self.config.read_timeout).await?;
                Ok(ReadProof { staleness_ms: None })
            }
            Consistency::Bounded(bound) => match self
                .proofs
                .prove_within(bound, self.config.read_timeout)
                .await
            {
                Some(s) => Ok(ReadProof {
                    staleness_ms: Some(s),
                }),
                None => Err(ApiError::StaleReplica(format!(
                    "this node cannot prove its data is at most {} ms stale; try another node",
                    bound.as_millis()
                ))),
            },
        }
    }

    /// One staleness-proof round (see [`crate::bounded_read`]).
    pub(crate) async fn proof_round(self: Arc<Self>) {
        let t = boottime_us();
        // Deliberate break, test builds only (see fault_injection.rs): a known leader is taken
        // as proof of freshness, with no quorum round.
        if crate::fault_injection::bounded_trusts_heartbeats() {
            if self.raft.metrics().borrow().current_leader.is_some() {
                self.proofs.publish(t);
            }
            return;
        }
        let budget = self.config.max_staleness;
        let Ok(index) = self.read_index(budget).await else {
            return;
        };
        if self.wait_applied(index, budget).await.is_ok() {
            self.proofs.publish(t);
        }
    }

    /// The error the Raft core stopped on (a failed disk, say), if it stopped on one: the node
    /// can then neither accept nor apply anything.
    pub fn fatal_error(&self) -> Option<String> {
        fatal_of(&self.raft.metrics().borrow())
    }

    /// A leader is known and this node has caught up (what `/readyz` answers).
    pub fn ready(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some() && self.caught_up()
    }

    /// How this node sees itself (the peer status route; the console shows it per member).
    pub fn member_view(&self) -> crate::peer::MemberView {
        let m = self.raft.metrics().borrow().clone();
        crate::peer::MemberView {
            id: self.id,
            state: node_state(m.state).as_str().to_string(),
            term: m.current_term,
            leader: m.current_leader,
            applied_index: m.last_applied.map(|l| l.index),
            revision: self.state.applied().revision,
            ready: self.ready(),
        }
    }

    /// Every metric of this node in the OpenMetrics text format (`GET /metrics`).
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// True when this node leads or holds a staleness proof within the default bound.
    pub fn caught_up(&self) -> bool {
        self.is_leader()
            || self
                .proofs
                .staleness_ms()
                .is_some_and(|s| s <= self.config.max_staleness.as_millis() as u64)
    }
}

/// Resolves once `stop` turns true (or its sender is gone): how every part of a node learns
/// that the node is stopping.
pub(crate) async fn when_stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A Raft role as the API names it.
pub fn node_state(state: openraft::ServerState) -> NodeState {
    match state {
        openraft::ServerState::Leader => NodeState::Leader,
        openraft::ServerState::Follower => NodeState::Follower,
        openraft::ServerState::Candidate => NodeState::Candidate,
        openraft::ServerState::Learner => NodeState::Learner,
        openraft::ServerState::Shutdown => NodeState::Shutdown,
    }
}

/// The fatal error in `m`, if the core stopped on one (not on a requested shutdown).
pub(crate) fn fatal_of(m: &openraft::RaftMetrics<NodeId, Member>) -> Option<String> {
    match &m.running_state {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
        Err(e) => Some(e.to_string()),
    }
}
