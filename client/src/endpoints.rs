//! The configured node endpoints and the one rotation through them that the sync loop and the
//! experiment event sender share: both talk to the endpoint the cursor names, and whichever
//! finds it failing moves the cursor on, so neither keeps retrying a node the other has left.

use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) struct Endpoints {
    list: Vec<String>,
    cursor: AtomicUsize,
}

impl Endpoints {
    /// Starts at a random endpoint so a fleet of applications spreads over the nodes.
    pub fn new(list: Vec<String>) -> Self {
        let start = if list.is_empty() {
            0
        } else {
            rand::random::<usize>() % list.len()
        };
        Self {
            list,
            cursor: AtomicUsize::new(start),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The endpoint to use now, with its position for [`Endpoints::advance_from`].
    pub fn current(&self) -> Option<(usize, &str)> {
        let i = self.cursor.load(Ordering::Acquire);
        self.list.get(i).map(|e| (i, e.as_str()))
    }

    /// Moves to the endpoint after `idx` if `idx` is still the current one: when both users
    /// found the same endpoint failing, it is left once, not skipped past its successor.
    pub fn advance_from(&self, idx: usize) {
        if self.list.is_empty() {
            return;
        }
        let next = (idx + 1) % self.list.len();
        let _ = self
            .cursor
            .compare_exchange(idx, next, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_once_per_failure_of_the_current_endpoint() {
        let e = Endpoints::new(vec!["a".into(), "b".into(), "c".into()]);
        let (i, _) = e.current().unwrap();
        e.advance_from(i);
        e.advance_from(i); // the other user found the same endpoint failing: no second move
        let (j, _) = e.current().unwrap();
        assert_eq!(j, (i + 1) % 3);
        for _ in 0..3 {
            let (k, _) = e.current().unwrap();
            e.advance_from(k);
        }
        assert_eq!(e.current().unwrap().0, j, "a full turn comes back");
        let none = Endpoints::new(Vec::new());
        assert!(none.current().is_none());
        none.advance_from(0);
    }
}
