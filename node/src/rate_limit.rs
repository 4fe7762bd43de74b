//! Request rates: per-caller token buckets for the evaluation endpoints (OFREP), where a caller
//! that exceeds its rate gets 429 with `Retry-After` instead of starving the others; and the
//! node-wide [`Pacer`] that admits the expensive starts of the SDK routes (a stream's first
//! snapshot, a snapshot request) at a bounded rate, so a fleet reconnecting at once queues
//! instead of taking the node's CPU from everything else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Callers tracked before the table is cleared (bounded memory; a cleared caller starts full).
const MAX_CALLERS: usize = 100_000;

pub struct RateLimiter {
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` requests per second per caller, with a burst of one second's worth; 0 disables.
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec: per_sec as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller`, or says when to come back.
    pub fn check(&self, caller: &str) -> Result<(), ApiError> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(caller) {
            buckets.clear();
        }
        let (tokens, last) = buckets
            .entry(caller.to_string())
            .or_insert((self.per_sec, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.per_sec);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / self.per_sec).ceil().max(1.0) as u64;
            Err(ApiError::RateLimited {
                retry_after_secs: wait,
            })
        }
    }
}

/// Admits requests at `per_sec`, a burst of `burst` at once, in arrival order (a generic cell
/// rate algorithm that sleeps instead of refusing): a request that would wait longer than
/// `max_wait` is refused at once with 429 and the `Retry-After` it would have needed.
pub struct Pacer {
    interval: Duration,
    /// How far ahead of now the schedule may run before a request waits (the burst).
    tolerance: Duration,
    max_wait: Duration,
    /// The time the schedule is booked up to: the next admission's theoretical arrival time.
    booked: Mutex<Instant>,
}

impl Pacer {
    /// `per_sec` admissions per second (0 disables pacing), `burst` of them at once.
    pub fn new(per_sec: u32, burst: u32, max_wait: Duration) -> Self {
        let interval = if per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / per_sec
        };
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
            max_wait,
            booked: Mutex::new(Instant::now()),
        }
    }

    /// Books the caller's place in the schedule: how long it must wait, or when to come back.
    fn book(&self, now: Instant) -> Result<Duration, ApiError> {
        if self.interval.is_zero() {
            return Ok(Duration::ZERO);
        }
        let mut booked = self.booked.lock().unwrap_or_else(|e| e.into_inner());
        let tat = (*booked).max(now);
        // This request may start once the schedule is within the burst tolerance of now.
        let wait = tat.saturating_duration_since(now + self.tolerance);
        if wait > self.max_wait {
            return Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        *booked = tat + self.interval;
        Ok(wait)
    }

    /// Waits for the caller's turn (at most `max_wait`), or refuses it with 429.
    pub async fn admit(&self) -> Result<(), ApiError> {
        let wait = self.book(Instant::now())?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_admits_a_burst_then_spaces_admissions_then_refuses_past_its_wait() {
        let pacer = Pacer::new(10, 3, Duration::from_millis(250));
        let now = Instant::now();
        let waits: Vec<_> = (0..6).map(|_| pacer.book(now)).collect();
        let ms = |w: &Result<Duration, ApiError>| w.as_ref().ok().map(|d| d.as_millis());
        assert_eq!(
            waits.iter().map(ms).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(0), Some(100), Some(200), None],
            "a burst of 3, then one per 100 ms, refused past 250 ms"
        );
        assert!(matches!(
            waits[5],
            Err(ApiError::RateLimited {
                retry_after_secs: 1
            })
        ));
        // A refusal books nothing; once time has passed, the schedule has room again.
        let later = now + Duration::from_millis(300);
        assert_eq!(ms(&pacer.book(later)), Some(0));
        let idle = Pacer::new(10, 3, Duration::ZERO);
        let much_later = now + Duration::from_secs(3600);
        assert_eq!(
            ms(&idle.book(much_later)),
            Some(0),
            "an idle pacer starts fresh"
        );
        assert_eq!(
            ms(&Pacer::new(0, 0, Duration::ZERO).book(now)),
            Some(0),
            "0 disables pacing"
        );
    }

    #[test]
    fn a_burst_beyond_the_rate_is_refused_per_caller() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        assert!(matches!(
            limiter.check("a"),
            Err(ApiError::RateLimited {
                retry_after_secs: 1
            })
        ));
        assert!(limiter.check("b").is_ok(), "callers have separate buckets");
        assert!(
            RateLimiter::new(0).check("a").is_ok(),
            "0 disables the limit"
        );
    }
}
