//! Per-caller token buckets for the evaluation endpoints (OFREP): a caller that exceeds its rate
//! gets 429 with `Retry-After` instead of starving the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

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
