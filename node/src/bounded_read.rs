//! Staleness proofs for `consistency=bounded` reads.
//!
//! A round records `T` (boot-time clock, so suspension counts), obtains a quorum-confirmed read
//! index `R` (locally on the leader, through `/raft/read-index` elsewhere), waits until this
//! node has applied `R`, and then publishes `T`. Every write acknowledged before `T` was
//! committed at or below `R`, so from then on a read here reflects every write acknowledged
//! before `now - (now - T)`: its staleness is `now - T`, computed at read time and rounded up.
//! The leader keeps proofs the same way, so an old leader cut off in a minority stops serving
//! once its last proof is older than the bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::clock::boottime_us;

/// The latest proof, shared by all reads on this node.
pub struct Proofs {
    /// `T` of the newest completed round, in boot-time microseconds (0: no proof yet).
    latest: watch::Sender<u64>,
    /// Wakes the round scheduler for an on-demand round.
    kick: Notify,
}

impl Default for Proofs {
    fn default() -> Self {
        Self {
            latest: watch::channel(0).0,
            kick: Notify::new(),
        }
    }
}

impl Proofs {
    /// Publishes a completed round that started at `t_us`, if it is newer than what we have.
    pub fn publish(&self, t_us: u64) {
        self.latest.send_if_modified(|cur| {
            if t_us > *cur {
                *cur = t_us;
                true
            } else {
                false
            }
        });
    }

    /// Staleness in whole milliseconds (rounded up) of the current proof, if any.
    pub fn staleness_ms(&self) -> Option<u64> {
        staleness_of(*self.latest.borrow(), boottime_us())
    }

    /// Waits until the node can prove staleness `<= bound`, starting a round on demand.
    /// Returns the staleness to report, or `None` when the deadline passes first.
    pub async fn prove_within(&self, bound: Duration, deadline: Duration) -> Option<u64> {
        let bound_ms = bound.as_millis() as u64;
        let mut rx = self.latest.subscribe();
        let wait = async {
            let mut kicked = false;
            loop {
                if let Some(s) = staleness_of(*rx.borrow_and_update(), boottime_us()) {
                    if s <= bound_ms {
                        return s;
                    }
                }
                if !kicked {
                    self.kick.notify_one();
                    kicked = true;
                }
                if rx.changed().await.is_err() {
                    // The sender lives as long as the node; keep the type checker honest.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(deadline, wait).await.ok()
    }

    /// Resolves when a round is wanted on demand.
    pub async fn kicked(&self) {
        self.kick.notified().await
    }
}

fn staleness_of(t_us: u64, now_us: u64) -> Option<u64> {
    if t_us == 0 {
        return None;
    }
    // +1 µs covers the truncation of both clock readings; then round up to whole ms.
    let elapsed = now_us.saturating_sub(t_us) + 1;
    Some(elapsed.div_ceil(1000))
}

/// Runs proof rounds every `period` and whenever a read asks, overlapping as needed.
pub async fn run_rounds<F, Fut>(proofs: Arc<Proofs>, period: Duration, round: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = proofs.kicked() => {}
        }
        tokio::spawn(round());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_rounds_up_and_needs_a_proof() {
        assert_eq!(staleness_of(0, 5_000), None);
        assert_eq!(staleness_of(1_000, 1_000), Some(1));
        assert_eq!(staleness_of(1_000, 2_000), Some(2));
        assert_eq!(staleness_of(1_000, 1_998), Some(1));
    }

    #[tokio::test]
    async fn prove_within_waits_for_a_fresh_round() {
        let proofs = Arc::new(Proofs::default());
        // No proof: times out.
        assert_eq!(
            proofs
                .prove_within(Duration::from_millis(100), Duration::from_millis(50))
                .await,
            None
        );
        // A round answering the kick makes the read succeed.
        let p = proofs.clone();
        let responder = tokio::spawn(async move {
            p.kicked().await;
            p.publish(boottime_us());
        });
        let s = proofs
            .prove_within(Duration::from_millis(500), Duration::from_secs(5))
            .await;
        responder.await.unwrap();
        assert!(matches!(s, Some(ms) if ms <= 500), "{s:?}");
    }
}
