//! Batches not yet accepted by a node, oldest first, at most `max` of them, and the count of
//! events dropped that the next batch formed reports.
//!
//! A batch is immutable once formed (its id, its entries and the `dropped` it carries), so
//! every retry sends the same body. Dropping a batch (the backlog full, or a node refusing it
//! as invalid) adds its events and the drops it carried to the count still to report; the next
//! batch formed carries that count, and an accepted batch has reported it.

use std::collections::VecDeque;

use super::batch::Batch;

pub(crate) struct Backlog {
    queue: VecDeque<Batch>,
    max: usize,
    /// Dropped events not yet carried by a batch.
    unreported: u64,
}

impl Backlog {
    pub fn new(max: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            max: max.max(1),
            unreported: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Dropped events not yet carried by any batch.
    pub fn unreported(&self) -> u64 {
        self.unreported
    }

    /// Queues an interval's batches. The first carries the unreported drops; with drops to
    /// report, nothing recorded and nothing queued, an empty batch carries them (while batches
    /// wait, the drops wait for the next batch formed: an empty batch never pushes a real one
    /// out). When full, the oldest batches are dropped. Returns the events dropped by this call
    /// (for the metrics).
    pub fn push(&mut self, mut batches: Vec<Batch>) -> u64 {
        if self.unreported > 0 {
            if batches.is_empty() && self.queue.is_empty() {
                batches.push(Batch::new(Vec::new(), Vec::new()));
            }
            if let Some(first) = batches.first_mut() {
                first.dropped = std::mem::take(&mut self.unreported);
            }
        }
        let mut dropped = 0u64;
        for b in batches {
            if self.queue.len() >= self.max {
                if let Some(old) = self.queue.pop_front() {
                    dropped = dropped.saturating_add(self.discard(old));
                }
            }
            self.queue.push_back(b);
        }
        dropped
    }

    /// The oldest batch, the next to send.
    pub fn front(&self) -> Option<&Batch> {
        self.queue.front()
    }

    /// The oldest batch was recorded by a node.
    pub fn accepted(&mut self) {
        self.queue.pop_front();
    }

    /// The oldest batch was refused for good; returns its events, now dropped.
    pub fn refused(&mut self) -> u64 {
        match self.queue.pop_front() {
            Some(b) => self.discard(b),
            None => 0,
        }
    }

    fn discard(&mut self, b: Batch) -> u64 {
        let events = b.events();
        self.unreported = self
            .unreported
            .saturating_add(events)
            .saturating_add(b.dropped);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment_events::batch::Exposure;

    fn batch(count: u64) -> Batch {
        Batch::new(
            vec![Exposure {
                flag: "f".into(),
                variant: "a".into(),
                count,
                users: Vec::new(),
            }],
            Vec::new(),
        )
    }

    #[test]
    fn the_backlog_is_bounded_and_every_dropped_event_is_reported_once() {
        let mut b = Backlog::new(3);
        assert_eq!(b.push(vec![batch(1), batch(2), batch(3)]), 0);
        // Full: the oldest (1 event) goes.
        assert_eq!(b.push(vec![batch(4)]), 1);
        assert_eq!((b.len(), b.unreported()), (3, 1));
        assert_eq!(b.front().unwrap().events(), 2, "oldest first");
        // Nothing recorded while batches wait: no empty batch pushes a real one out.
        assert_eq!(b.push(Vec::new()), 0);
        assert_eq!((b.len(), b.unreported()), (3, 1));
        // The next batch formed carries the drop.
        assert_eq!(b.push(vec![batch(5)]), 2);
        assert_eq!(b.unreported(), 2, "batch(2) dropped to make room");
        let newest = b.queue.back().unwrap().clone();
        assert_eq!((newest.events(), newest.dropped), (5, 1));
        // Refusing a carrier hands its drops on: 2 + 3 + 4 + 5 + 1 (carried).
        assert_eq!(b.refused(), 3);
        assert_eq!(b.refused(), 4);
        assert_eq!(b.refused(), 5);
        assert_eq!(b.refused(), 0, "nothing left to refuse");
        assert_eq!((b.len(), b.unreported()), (0, 2 + 3 + 4 + 5 + 1));
        // With nothing queued, an empty batch reports them.
        assert_eq!(b.push(Vec::new()), 0);
        let carrier = b.front().unwrap().clone();
        assert_eq!((b.len(), carrier.events(), carrier.dropped), (1, 0, 15));
        b.accepted();
        assert_eq!((b.len(), b.unreported()), (0, 0));
        b.push(vec![batch(6), batch(7)]);
        assert!(b.queue.iter().all(|x| x.dropped == 0), "reported once");
        b.accepted();
        b.accepted();
        // Nothing to send and nothing dropped: no batch at all.
        b.push(Vec::new());
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_backlog_of_the_default_size_never_holds_more() {
        let mut b = Backlog::new(120);
        let mut dropped = 0;
        for _ in 0..500 {
            dropped += b.push(vec![batch(1)]);
            assert!(b.len() <= 120);
        }
        assert_eq!(dropped, 380);
        // Every drop is carried by a queued batch or still unreported (a dropped carrier
        // hands its count on): none is lost, none counted twice.
        let carried: u64 = b.queue.iter().map(|x| x.dropped).sum();
        assert_eq!(carried + b.unreported(), 380);
    }
}
