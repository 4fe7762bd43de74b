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

/// True when the environment variable `name` is `1` (used by the node's switches too).
#[cfg(feature = "fault-injection")]
pub fn switch_on(name: &str) -> bool {
    let on = std::env::var(name).is_ok_and(|v| v == "1");
    if on {
        tracing::warn!("{name}=1: a guarantee is broken on purpose (fault-injection build)");
    }
    on
}
