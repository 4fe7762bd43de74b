//! What the evaluating threads record between two sends: per (flag, variant) an exposure count
//! and a distinct-user sketch, and per (flag, variant, metric) a conversion count, a sketch of
//! the converting users and the sums of the values tracked.
//!
//! One `std::sync::Mutex` holds it, taken for a map lookup and a few additions (never across
//! an await); the targeting key is hashed before the lock is taken. Memory is fixed per entry
//! (a sketch allocates its 16 KiB of registers at its first user) and the entries are those of
//! the experiment flags evaluated or tracked since the last send: at most 10 variants per flag,
//! 10 metrics per variant.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use flagstaff_experiments::{key_hash, DistinctCount};

/// Exposures and conversions of one variant of one experiment flag.
#[derive(Default)]
pub(crate) struct Arm {
    pub exposures: u64,
    pub users: DistinctCount,
    /// By metric; an experiment counts at most 10.
    pub conversions: Vec<(Box<str>, Conversion)>,
}

/// Conversions of one metric in one arm.
#[derive(Default)]
pub(crate) struct Conversion {
    pub count: u64,
    pub users: DistinctCount,
    pub value_count: u64,
    pub value_sum: f64,
    pub value_sum_squares: f64,
}

impl Conversion {
    fn add(&mut self, user: Option<u64>, value: Option<f64>) {
        self.count = self.count.saturating_add(1);
        if let Some(h) = user {
            self.users.insert_hash(h);
        }
        if let Some(v) = value.filter(|v| v.is_finite()) {
            let (sum, squares) = (self.value_sum + v, self.value_sum_squares + v * v);
            // A value whose square (or sum) leaves f64 would make the sums unsendable as
            // JSON: it is ignored like a non-finite one; the conversion still counts.
            if sum.is_finite() && squares.is_finite() {
                self.value_count += 1;
                self.value_sum = sum;
                self.value_sum_squares = squares;
            }
        }
    }
}

/// Everything recorded since the last send: flag → variant → arm.
#[derive(Default)]
pub(crate) struct Aggregates {
    pub flags: HashMap<Box<str>, Vec<(Box<str>, Arm)>>,
}

impl Aggregates {
    fn arm(&mut self, flag: &str, variant: &str) -> &mut Arm {
        // Allocates only for an entry's first event of an interval.
        if !self.flags.contains_key(flag) {
            self.flags.insert(flag.into(), Vec::new());
        }
        let arms = self.flags.get_mut(flag).expect("inserted above");
        let i = match arms.iter().position(|(v, _)| **v == *variant) {
            Some(i) => i,
            None => {
                arms.push((variant.into(), Arm::default()));
                arms.len() - 1
            }
        };
        &mut arms[i].1
    }
}

/// The aggregates shared by the evaluating threads and the sender.
#[derive(Default)]
pub(crate) struct Recorder {
    live: Mutex<Aggregates>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Aggregates> {
        // A panic while holding the lock leaves counts that are still counts.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One exposure of `variant` of experiment flag `flag` to `user` (a targeting key).
    pub fn expose(&self, flag: &str, variant: &str, user: Option<&str>) {
        let hash = user.map(key_hash);
        let mut live = self.lock();
        let arm = live.arm(flag, variant);
        arm.exposures = arm.exposures.saturating_add(1);
        if let Some(h) = hash {
            arm.users.insert_hash(h);
        }
    }

    /// One conversion of `metric` in each of `arms` ((flag, variant) pairs) by `user`, with
    /// `value` when it is finite.
    pub fn convert(
        &self,
        arms: &[(&str, &str)],
        metric: &str,
        user: Option<&str>,
        value: Option<f64>,
    ) {
        if arms.is_empty() {
            return;
        }
        let hash = user.map(key_hash);
        let mut live = self.lock();
        for (flag, variant) in arms {
            let arm = live.arm(flag, variant);
            let i = match arm.conversions.iter().position(|(m, _)| **m == *metric) {
                Some(i) => i,
                None => {
                    arm.conversions.push((metric.into(), Conversion::default()));
                    arm.conversions.len() - 1
                }
            };
            arm.conversions[i].1.add(hash, value);
        }
    }

    /// Takes everything recorded so far, leaving nothing.
    pub fn take(&self) -> Aggregates {
        std::mem::take(&mut *self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposures_and_conversions_add_up_per_arm() {
        let r = Recorder::new();
        for i in 0..100 {
            r.expose(
                "checkout",
                if i % 4 == 0 { "b" } else { "a" },
                Some(&format!("u{}", i % 10)),
            );
        }
        r.expose("checkout", "a", None);
        r.convert(
            &[("checkout", "b"), ("other", "x")],
            "buy",
            Some("u0"),
            Some(2.0),
        );
        r.convert(&[("checkout", "b")], "buy", Some("u0"), Some(f64::NAN));
        r.convert(&[("checkout", "b")], "buy", None, Some(1e200)); // its square leaves f64
        r.convert(&[("checkout", "b")], "buy", Some("u4"), Some(-3.0));
        let agg = r.take();
        assert!(r.take().flags.is_empty(), "take leaves nothing");
        let arms = &agg.flags["checkout"];
        let arm = |v: &str| &arms.iter().find(|(n, _)| &**n == v).unwrap().1;
        assert_eq!(arm("a").exposures, 76);
        assert_eq!(arm("b").exposures, 25);
        // Odd users only ever see `a`; even ones see both.
        assert_eq!(arm("a").users.estimate().round(), 10.0);
        assert_eq!(arm("b").users.estimate().round(), 5.0);
        let (m, c) = &arm("b").conversions[0];
        assert_eq!(&**m, "buy");
        assert_eq!(c.count, 4);
        assert_eq!(c.value_count, 2);
        assert_eq!(c.value_sum, -1.0);
        assert_eq!(c.value_sum_squares, 13.0);
        assert_eq!(c.users.estimate().round(), 2.0);
        let other = &agg.flags["other"][0].1;
        assert_eq!((other.exposures, other.conversions[0].1.count), (0, 1));
    }
}
