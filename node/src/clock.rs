//! Monotonic time that keeps counting while the machine is suspended (`CLOCK_BOOTTIME`), used
//! for staleness proofs: a suspended node must not believe its proof is younger than it is.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds on `CLOCK_BOOTTIME` (Linux) or `CLOCK_MONOTONIC` elsewhere.
pub fn boottime_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_BOOTTIME;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_MONOTONIC;
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Wall-clock milliseconds since the Unix epoch; stamps proposals on the leader and backups.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
