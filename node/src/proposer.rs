//! The proposer: gathers the writes that arrive while one batch is being replicated and flushed
//! into the next log entry, so one fsync serves many requests. Each command still gets its own
//! result and revision.

use flagstaff_raft_store::{CommandResult, Envelope, Raft, Request};
use openraft::error::{ClientWriteError, RaftError};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};

use crate::clock::wall_ms;
use crate::peer::PeerRefusal;

/// Largest number of commands in one log entry.
const MAX_BATCH: usize = 1024;

pub type ProposeResult = Result<Vec<CommandResult>, PeerRefusal>;

/// A share of the node's proposal gate (`Node::enter_as_leader`), held until the proposal's
/// entry is committed or refused, even when its caller gave up waiting first.
pub type ProposalPass = tokio::sync::OwnedRwLockReadGuard<()>;

struct Pending {
    envelopes: Vec<Envelope>,
    reply: oneshot::Sender<ProposeResult>,
    pass: ProposalPass,
}

/// Handle to the proposer task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the proposer task; `batch_sizes` gets the number of commands of each entry.
    pub fn spawn(raft: Raft, batch_sizes: Histogram) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(raft, rx, batch_sizes));
        Self { tx }
    }

    /// Proposes `envelopes` (from one request) and waits for their results. Callers bound the
    /// wait with their own deadline.
    pub async fn propose(&self, envelopes: Vec<Envelope>, pass: ProposalPass) -> ProposeResult {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            envelopes,
            reply,
            pass,
        };
        if self.tx.send(pending).await.is_err() {
            return Err(PeerRefusal::Unavailable("node is shutting down".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(PeerRefusal::Unavailable("node is shutting down".into())))
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, batch_sizes: Histogram) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].envelopes.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.envelopes.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let mut sizes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut passes = Vec::with_capacity(batch.len());
        let mut commands = Vec::with_capacity(count);
        for p in batch {
            sizes.push(p.envelopes.len());
            replies.push(p.reply);
            passes.push(p.pass);
            commands.extend(p.envelopes);
        }
        batch_sizes.observe(commands.len() as f64);
        let outcome = raft
            .client_write(Request {
                proposed_at_ms: wall_ms(),
                commands,
            })
            .await;
        match outcome {
            Ok(resp) => {
                let mut results = resp.data.results.into_iter();
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(results.by_ref().take(size).collect()));
                }
            }
            Err(e) => {
                let refusal = match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                        PeerRefusal::NotLeader {
                            leader: f.leader_id,
                        }
                    }
                    other => PeerRefusal::Unavailable(other.to_string()),
                };
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
        // The entry is committed or refused: a hand-over may close the gate now.
        drop(passes);
    }
}
