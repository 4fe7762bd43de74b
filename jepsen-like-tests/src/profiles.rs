//! Named sets of scenarios, and the deliberate breaks with the checker expected to catch each.

use std::time::Duration;

use crate::nemesis::Fault;
use crate::report::Report;
use crate::run::Scenario;

/// `ci`: two seeded schedules covering every fault kind, about 3 minutes in all.
/// `smoke`: one short run. `soak`: 5 nodes, every fault, for `duration`.
pub fn profile(name: &str, duration: Option<Duration>) -> Option<Vec<Scenario>> {
    use Fault::*;
    let mut s = match name {
        "ci" => vec![
            Scenario::new(
                "3 voters: kill -9, pauses, isolated leader, majority/minority",
                3,
                30,
                &[
                    Kill,
                    KillLeader,
                    Pause,
                    PauseLeader,
                    IsolateLeader,
                    IsolateFollower,
                    MajorityMinority,
                ],
            ),
            Scenario::new(
                "5 voters: bridge, flapping, majority/minority, kill -9",
                5,
                30,
                &[
                    Bridge,
                    Flapping,
                    MajorityMinority,
                    IsolateLeader,
                    KillLeader,
                    Pause,
                ],
            ),
        ],
        "smoke" => vec![Scenario::new(
            "3 voters: kill the leader, isolate the leader",
            3,
            10,
            &[KillLeader, IsolateLeader],
        )],
        "soak" => vec![Scenario::new(
            "5 voters: every fault",
            5,
            600,
            &[
                Kill,
                KillLeader,
                Pause,
                PauseLeader,
                IsolateLeader,
                IsolateFollower,
                MajorityMinority,
                Bridge,
                Flapping,
            ],
        )],
        _ => return None,
    };
    if let Some(d) = duration {
        for sc in &mut s {
            sc.duration = d;
        }
    }
    Some(s)
}

/// A deliberate break: the switch, the schedule that exposes it, and the checker that must
/// report it.
pub struct Break {
    pub name: &'static str,
    pub env: &'static str,
    pub scenario: Scenario,
    pub caught: fn(&Report) -> bool,
}

pub fn breaks() -> Vec<Break> {
    use Fault::*;
    let with = |env: &str, mut s: Scenario| {
        s.env = vec![(env.to_string(), "1".to_string())];
        s
    };
    vec![
        Break {
            name: "linearizable reads served from local state",
            env: "FLAGSTAFF_FAULT_LOCAL_LINEARIZABLE",
            scenario: with(
                "FLAGSTAFF_FAULT_LOCAL_LINEARIZABLE",
                Scenario::new(
                    "break: local linearizable reads",
                    3,
                    12,
                    &[IsolateFollower, IsolateLeader],
                ),
            ),
            caught: |r| r.linearizability_anomalies() > 0,
        },
        Break {
            name: "bounded reads trusting a known leader instead of a quorum proof",
            env: "FLAGSTAFF_FAULT_BOUNDED_TRUSTS_HEARTBEATS",
            scenario: with(
                "FLAGSTAFF_FAULT_BOUNDED_TRUSTS_HEARTBEATS",
                Scenario::new(
                    "break: bounded reads without proofs",
                    3,
                    12,
                    &[IsolateLeader],
                ),
            ),
            caught: |r| !r.bounded.anomalies.is_empty(),
        },
        Break {
            name: "CAS applied without its If-Match condition",
            env: "FLAGSTAFF_FAULT_CAS_IGNORES_CONDITION",
            scenario: with(
                "FLAGSTAFF_FAULT_CAS_IGNORES_CONDITION",
                Scenario::new("break: CAS without condition", 3, 8, &[]),
            ),
            caught: |r| r.linearizability_anomalies() > 0,
        },
    ]
}
