//! A stopping leader hands its leadership to a caught-up voter first, so writes pause for one
//! vote round instead of an election timeout. `RunningNode::shutdown` calls
//! [`Node::hand_over`]; the chosen voter campaigns when asked ([`Node::campaign`], peer route
//! `POST /raft/elect`).
//!
//! openraft 0.9 has no transfer call, and a voter refuses every candidate while the lease of the
//! leader it follows holds (`election_timeout_max` since it last heard from that leader). The
//! leader itself is the exception: its vote last changed when it won, so once a lease has passed
//! since then, it grants its vote to a candidate of a higher term whose log holds all of its own.
//! Two votes, the candidate's and the stopping leader's, are a majority of up to three voters.
//! With more voters the others refuse, so such a node stops as before and its successor is
//! elected after the election timeout.
//!
//! The steps: wait until that lease has passed (writes go on meanwhile); close the proposal gate,
//! so no local write appends another entry (writes that arrive wait at the gate, then find the
//! new leader and go there); wait until the most caught-up other voter holds the last entry; ask
//! it to campaign; wait until another leader is known; open the gate.

use std::time::Duration;

use flagstaff_raft_store::NodeId;
use tokio::time::Instant;

use crate::node::Node;
use crate::peer::{ElectReply, ElectRequest, PeerRefusal, PATH_ELECT};

/// What [`Node::hand_over`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// This node did not lead: nothing to hand over.
    NotLeader,
    /// No other voter to take over.
    NoOtherVoter,
    /// This many voters: a candidate needs votes that the others' lease withholds.
    TooManyVoters(usize),
    /// This voter leads now.
    HandedTo(NodeId),
    /// Leadership did not move (the node stops anyway).
    Failed(String),
}

/// Most voters a hand-over can win: the candidate's vote and the stopping leader's are a majority.
const MAX_VOTERS: usize = 3;

impl Node {
    /// Hands leadership to the most caught-up other voter, within `within`. Writes arriving
    /// meanwhile wait (for their own deadline), then go to the new leader.
    pub async fn hand_over(&self, within: Duration) -> HandOver {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return HandOver::NotLeader;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if voters.len() > MAX_VOTERS {
            return HandOver::TooManyVoters(voters.len());
        }
        if voters.iter().all(|v| *v == self.id) {
            return HandOver::NoOtherVoter;
        }
        let deadline = Instant::now() + within;
        match tokio::time::timeout_at(deadline, self.hand_over_steps(deadline)).await {
            Ok(Ok(to)) => HandOver::HandedTo(to),
            Ok(Err(why)) => HandOver::Failed(why),
            Err(_) => HandOver::Failed(format!("leadership did not move within {within:?}")),
        }
    }

    /// Waits until this node's own vote would count for a candidate: a lease after it last
    /// changed (openraft's `Engine::handle_vote_req`).
    async fn wait_out_own_lease(&self) -> Result<(), String> {
        let changed = self
            .raft
            .with_raft_state(|st| st.vote_last_modified())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(at) = changed {
            let lease = self.config.election_timeout_max + Duration::from_millis(1);
            tokio::time::sleep_until(at + lease).await;
        }
        Ok(())
    }

    async fn hand_over_steps(&self, deadline: Instant) -> Result<NodeId, String> {
        // Writes go on while the lease runs out.
        self.wait_out_own_lease().await?;
        // Every proposal, membership changes included, holds the gate until its entry is
        // committed or refused, so from here on the log ends where it ends.
        let _closed = self.proposal_gate.write().await;
        // Again, in case leadership was lost and won back meanwhile (then the vote is new).
        self.wait_out_own_lease().await?;

        let mut rx = self.raft.metrics();
        let lost_after = self.config.election_timeout_min.as_millis() as u64;
        let (id, addr, request) = loop {
            let m = rx.borrow_and_update().clone();
            if m.current_leader != Some(self.id) {
                return Err("leadership moved meanwhile".into());
            }
            let membership = m.membership_config.membership();
            if membership.get_joint_config().len() > 1 {
                return Err("a membership change is under way".into());
            }
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            if voters.len() > MAX_VOTERS {
                return Err(format!("{} voters now", voters.len()));
            }
            // A leader that a quorum no longer answers has nobody to hand over to.
            if m.millis_since_quorum_ack.is_none_or(|ms| ms > lost_after) {
                return Err(format!("no quorum has answered for {lost_after} ms"));
            }
            let last = m.last_log_index.unwrap_or(0);
            let best = m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id && voters.contains(id))
                    .map(|(id, matched)| (*id, matched.map_or(0, |l| l.index)))
                    .max_by_key(|(_, index)| *index)
            });
            if let Some((id, _)) = best.filter(|(_, matched)| *matched >= last) {
                let addr = membership
                    .get_node(&id)
                    .map(|n| n.peer_addr.clone())
                    .ok_or_else(|| format!("voter {id} has no address"))?;
                break (
                    id,
                    addr,
                    ElectRequest {
                        term: m.current_term,
                        last_log_index: last,
                    },
                );
            }
            // Looked at again on every change, and at least once per heartbeat (the quorum).
            let beat = self.config.heartbeat_interval;
            if let Ok(Err(_)) = tokio::time::timeout(beat, rx.changed()).await {
                return Err("Raft stopped".into());
            }
        };

        let remaining = deadline.saturating_duration_since(Instant::now());
        let reply: ElectReply = self
            .peers
            .call(&addr, PATH_ELECT, &request, remaining)
            .await
            .map_err(|e| format!("asking voter {id} to campaign: {e}"))?;
        reply.map_err(|r| format!("voter {id} would not campaign: {r}"))?;

        let m = rx
            .wait_for(|m| m.current_leader.is_some_and(|l| l != self.id))
            .await
            .map_err(|_| "Raft stopped".to_string())?;
        m.current_leader
            .ok_or_else(|| "no leader after the campaign".to_string())
    }

    /// Campaigns at once when a stopping leader asks (`POST /raft/elect`): only in the term it
    /// names, as a voter that is not the leader and holds every entry it names.
    pub async fn campaign(&self, req: ElectRequest) -> ElectReply {
        let m = self.raft.metrics().borrow().clone();
        let refuse = |why: String| Err(PeerRefusal::Unavailable(why));
        if m.current_term != req.term {
            return refuse(format!(
                "asked in term {}, this node is in term {}",
                req.term, m.current_term
            ));
        }
        if m.current_leader == Some(self.id) {
            return refuse("this node leads already".into());
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
        {
            return refuse("this node is not a voter".into());
        }
        let last = m.last_log_index.unwrap_or(0);
        if last < req.last_log_index {
            return refuse(format!(
                "this node holds entries up to {last}, not {}",
                req.last_log_index
            ));
        }
        tracing::info!(
            term = req.term,
            "the leader is stopping; campaigning at its request"
        );
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| PeerRefusal::Unavailable(e.to_string()))
    }
}
