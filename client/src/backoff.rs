//! Jittered exponential backoff between reconnect attempts.

use std::time::Duration;

/// Delay before attempt number `failures` (1 = first retry): `min * 2^(failures-1)` capped at
/// `max`, then "equal jitter" (half fixed, half random), so many clients that lost the same node
/// do not reconnect in lockstep while each still waits a bounded time.
pub fn delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let half = base / 2;
    let half_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let jitter_ns = rand::random::<u64>() % half_ns.saturating_add(1).max(1);
    half + Duration::from_nanos(jitter_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for failures in 0u32..40 {
            let cap = (min * (1u32 << failures.saturating_sub(1).min(20))).min(max);
            for _ in 0..50 {
                let d = delay(failures, min, max);
                assert!(d >= cap / 2 && d <= cap, "{failures}: {d:?} vs {cap:?}");
            }
        }
        // Absurd bounds do not overflow.
        let _ = delay(u32::MAX, Duration::MAX, Duration::MAX);
        let samples: std::collections::HashSet<_> = (0..50).map(|_| delay(5, min, max)).collect();
        assert!(samples.len() > 10, "jitter varies the delay");
    }
}
