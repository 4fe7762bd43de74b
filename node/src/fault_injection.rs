//! Deliberate guarantee breaks for the robustness suite (`jepsen-like-tests/`); see
//! `flagstaff_raft_store::fault_injection`. Without the `fault-injection` feature every switch
//! is a constant `false`.

#[cfg(feature = "fault-injection")]
use flagstaff_raft_store::fault_injection::switch_on;

/// `FLAGSTAFF_FAULT_LOCAL_LINEARIZABLE=1`: `consistency=linearizable` reads answer from local
/// state with no read index.
#[cfg(feature = "fault-injection")]
pub fn local_linearizable_reads() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| switch_on("FLAGSTAFF_FAULT_LOCAL_LINEARIZABLE"))
}

/// `FLAGSTAFF_FAULT_BOUNDED_TRUSTS_HEARTBEATS=1`: staleness proofs are published whenever a
/// leader is known, without a quorum-confirmed read index.
#[cfg(feature = "fault-injection")]
pub fn bounded_trusts_heartbeats() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| switch_on("FLAGSTAFF_FAULT_BOUNDED_TRUSTS_HEARTBEATS"))
}

/// `FLAGSTAFF_FAULT_WATCH_SKIPS_SNAPSHOT=1`: after a Raft snapshot install the watch hub sends
/// no fresh `snapshot` event; streams just continue, skipping the revisions it covered.
#[cfg(feature = "fault-injection")]
pub fn watch_skips_snapshot() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| switch_on("FLAGSTAFF_FAULT_WATCH_SKIPS_SNAPSHOT"))
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn watch_skips_snapshot() -> bool {
    false
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn local_linearizable_reads() -> bool {
    false
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn bounded_trusts_heartbeats() -> bool {
    false
}
