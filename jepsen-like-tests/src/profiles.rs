//! Named sets of scenarios, and the deliberate breaks with the checker expected to catch each.

use std::time::Duration;

use crate::nemesis::Fault;
use crate::report::Report;
use crate::run::Scenario;

/// `ci`: three seeded schedules covering every fault kind (membership changes and Raft
/// snapshot installs included), a few minutes in all.
/// `smoke`: one short run. `soak`: 5 nodes, every fault, for `duration`.
pub fn profile(name: &str, duration: Option<Duration>) -> Option<Vec<Scenario>> {
    use Fault::*;
    let mut s = match name {
        "ci" => vec![
            Scenario {
                learners: 1,
                ..Scenario::new(
                    "3 voters + a learner: kill -9, pauses, isolated leader, majority/minority, voter replaced",
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
                        ReplaceVoter,
                    ],
                )
            },
            Scenario::new(
                "5 voters: bridge, flapping, majority/minority, kill -9, a load burst",
                5,
                30,
                &[
                    Bridge,
                    Flapping,
                    MajorityMinority,
                    IsolateLeader,
                    KillLeader,
                    Pause,
                    LoadBurst,
                ],
            ),
            small_snapshots(Scenario::new(
                "3 voters, small Raft snapshots: a follower cut off or down while the log moves past a snapshot, a load burst",
                3,
                30,
                &[IsolateFollower, IsolateFollower, Kill, PauseLeader, LoadBurst],
            )),
        ],
        "smoke" => vec![Scenario::new(
            "3 voters: kill the leader, isolate the leader",
            3,
            10,
            &[KillLeader, IsolateLeader],
        )],
        "soak" => vec![Scenario {
            learners: 1,
            ..Scenario::new(
                "5 voters + a learner: every fault",
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
                    ReplaceVoter,
                    LoadBurst,
                ],
            )
        }],
        _ => return None,
    };
    if let Some(d) = duration {
        for sc in &mut s {
            sc.duration = d;
        }
    }
    Some(s)
}

/// Nodes that snapshot every 20 entries and keep 5 behind, so a follower that misses a
/// couple of seconds of writes is sent a Raft snapshot; watchers ask for an 8 s bound (and the
/// nodes allow it) so their streams outlive a short partition and see the install live. A
/// filler keeps the log moving while the checked clients wait on a cut-off node.
fn small_snapshots(mut s: Scenario) -> Scenario {
    s.node_args = [
        "--snapshot-every",
        "20",
        "--logs-behind-snapshot",
        "5",
        "--max-staleness-ms",
        "8000",
    ]
    .map(String::from)
    .to_vec();
    s.watch_staleness_ms = Some(8000);
    s.filler = true;
    s
}

/// A deliberate break: the switch, the schedule that exposes it, and the checker that must
/// report it.
pub struct Break {
    pub name: &'static str,
    pub env: &'static str,
    pub scenario: Scenario,
    pub caught: fn(&Report) -> bool,
}

/// Slows follower apply (fault-injection builds): `FLAGSTAFF_FAULT_APPLY_DELAY_MS=N`.
pub const APPLY_DELAY: &str = "FLAGSTAFF_FAULT_APPLY_DELAY_MS";

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
            // No partition needed: followers apply 300 ms after the leader acknowledged.
            scenario: Scenario {
                env: vec![
                    ("FLAGSTAFF_FAULT_LOCAL_LINEARIZABLE".into(), "1".into()),
                    (APPLY_DELAY.into(), "300".into()),
                ],
                ..Scenario::new(
                    "break: local linearizable reads, slow follower apply",
                    3,
                    10,
                    &[],
                )
            },
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
        Break {
            name: "watch hub skipping the revisions an installed Raft snapshot covered",
            env: "FLAGSTAFF_FAULT_WATCH_SKIPS_SNAPSHOT",
            scenario: with(
                "FLAGSTAFF_FAULT_WATCH_SKIPS_SNAPSHOT",
                small_snapshots(Scenario::new(
                    "break: watch skips snapshot installs",
                    3,
                    20,
                    &[IsolateFollower],
                )),
            ),
            caught: |r| !r.watch.anomalies.is_empty(),
        },
    ]
}
