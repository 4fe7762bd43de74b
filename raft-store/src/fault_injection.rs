//! Deliberate guarantee breaks, so the robustness suite (`jepsen-like-tests/`) can show that
//! its checkers say no. Compiled in only with the `fault-injection` feature, which refuses
//! release builds; each switch is an environment variable read once. Without the feature every
//! switch is a constant `false`.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("feature `fault-injection` breaks guarantees on purpose: never in release builds");

/// `FLAGSTAFF_FAULT_CAS_IGNORES_CONDITION=1`: apply writes without checking `If-Match` on an
/// existing item.
#[cfg(feature = "fault-injection")]
pub fn cas_ignores_condition() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| switch_on("FLAGSTAFF_FAULT_CAS_IGNORES_CONDITION"))
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn cas_ignores_condition() -> bool {
    false
}

#[cfg(feature = "fault-injection")]
static LOCAL_NODE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tells the switches which node this process runs (one node per process in the suite).
#[cfg(feature = "fault-injection")]
pub fn set_local_node(id: u64) {
    LOCAL_NODE.store(id, std::sync::atomic::Ordering::Relaxed);
}

/// `FLAGSTAFF_FAULT_APPLY_DELAY_MS=N`: an entry proposed by another node (that is, applied as
/// a follower or learner) is applied no sooner than `N` ms after the leader stamped it, so a
/// follower visibly trails the leader on loopback (a latency, not a throughput limit). Returns
/// how long to wait still. Not a guarantee break by itself: the read paths must cope with it.
#[cfg(feature = "fault-injection")]
pub fn apply_delay(proposed_by: u64, proposed_at_ms: u64) -> Option<std::time::Duration> {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *MS.get_or_init(|| {
        let ms = std::env::var("FLAGSTAFF_FAULT_APPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ms > 0 {
            tracing::warn!("FLAGSTAFF_FAULT_APPLY_DELAY_MS={ms}: follower apply slowed on purpose (fault-injection build)");
        }
        ms
    });
    if ms == 0 || proposed_by == LOCAL_NODE.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let wait = proposed_at_ms.saturating_add(ms).saturating_sub(now_ms);
    (wait > 0).then(|| std::time::Duration::from_millis(wait))
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn set_local_node(_id: u64) {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn apply_delay(_proposed_by: u64, _proposed_at_ms: u64) -> Option<std::time::Duration> {
    None
}

/// True when the environment variable `name` is `1` (used by the node's switches too).
#[cfg(feature = "fault-injection")]
pub fn switch_on(name: &str) -> bool {
    let on = std::env::var(name).is_ok_and(|v| v == "1");
    if on {
        tracing::warn!("{name}=1: a guarantee is broken on purpose (fault-injection build)");
    }
    on
}

/// `FLAGSTAFF_FAULT_STORAGE_FAIL_FILE=NAME`: while a file `NAME` exists in the node's data dir
/// (beside the store at `db_dir`), every write to the store (log appends, votes, state-machine
/// rows) fails with an I/O error, as on a full or failing disk. The fault suite creates the
/// file to fail one node's disk.
#[cfg(feature = "fault-injection")]
pub fn storage_fault(db_dir: &std::path::Path) -> Option<std::io::Error> {
    static NAME: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    let name = NAME.get_or_init(|| std::env::var_os("FLAGSTAFF_FAULT_STORAGE_FAIL_FILE"));
    let failing = name
        .as_ref()
        .is_some_and(|n| db_dir.parent().unwrap_or(db_dir).join(n).exists());
    failing.then(|| {
        std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (FLAGSTAFF_FAULT_STORAGE_FAIL_FILE)",
        )
    })
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn storage_fault(_db_dir: &std::path::Path) -> Option<std::io::Error> {
    None
}
