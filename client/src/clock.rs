//! The clock data ages are measured on: monotonic and, on Linux, still counting while the
//! machine is suspended (`CLOCK_BOOTTIME`), so a laptop waking from sleep does not take hours-old
//! flags for fresh ones.

/// Nanoseconds on a monotonic clock that includes suspend where the platform offers one.
#[cfg(unix)]
pub fn now_ns() -> i64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = libc::CLOCK_BOOTTIME;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let clock = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec owned by this frame; clock_gettime only writes to it.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return fallback_ns();
    }
    // `time_t` and `c_long` are 32 bits on some targets, hence the casts.
    #[allow(clippy::unnecessary_cast)]
    let (secs, nanos) = (ts.tv_sec as i64, ts.tv_nsec as i64);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Nanoseconds on a monotonic clock.
#[cfg(not(unix))]
pub fn now_ns() -> i64 {
    fallback_ns()
}

fn fallback_ns() -> i64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START
        .get_or_init(Instant::now)
        .elapsed()
        .as_nanos()
        .min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn moves_forward() {
        let a = super::now_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = super::now_ns();
        assert!(b - a >= 5_000_000, "{a} {b}");
    }
}
