//! Leader-side read index with coalescing: concurrent requests share one quorum round, and a
//! request only joins a round that starts after it arrived (requests that come in while a round
//! is in flight wait for the next one).

use std::time::Duration;

use flagstaff_raft_store::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::peer::PeerRefusal;

pub type ReadIndexOutcome = Result<u64, PeerRefusal>;

#[derive(Clone)]
pub struct ReadIndexCoalescer {
    tx: mpsc::Sender<oneshot::Sender<ReadIndexOutcome>>,
}

impl ReadIndexCoalescer {
    pub fn spawn(raft: Raft, round_timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(raft, rx, round_timeout));
        Self { tx }
    }

    /// The quorum-confirmed read log index, if this node is the leader.
    pub async fn read_index(&self) -> ReadIndexOutcome {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(reply).await.is_err() {
            return Err(PeerRefusal::Unavailable("node is shutting down".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(PeerRefusal::Unavailable("node is shutting down".into())))
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<oneshot::Sender<ReadIndexOutcome>>,
    round_timeout: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let outcome = match tokio::time::timeout(round_timeout, raft.get_read_log_id()).await {
            Err(_) => Err(PeerRefusal::Unavailable(
                "read index round timed out".into(),
            )),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(PeerRefusal::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(PeerRefusal::Unavailable(e.to_string())),
        };
        for w in waiting {
            let _ = w.send(outcome.clone());
        }
    }
}
