//! Fault schedules: seeded, so a run can be replayed with the same faults in the same order
//! (timing on a shared machine still varies).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cluster::{Cluster, Health};
use crate::workload::Recorder;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` of a random node, restarted when healed.
    Kill,
    /// `kill -9` of the leader.
    KillLeader,
    /// SIGSTOP of a random node, SIGCONT when healed.
    Pause,
    PauseLeader,
    /// The leader cut off from everyone (an old leader in a minority of one).
    IsolateLeader,
    /// One follower cut off from everyone.
    IsolateFollower,
    /// A random minority against the majority.
    MajorityMinority,
    /// Two halves that both see one middle node, which links them (5 nodes).
    Bridge,
    /// Random partitions switched on and off every 200-400 ms.
    Flapping,
    /// Membership under load: a brand-new node (next id, empty dir) is added as a learner,
    /// promoted once caught up, then a follower voter is removed and stopped for good (its id
    /// and dir are never reused).
    ReplaceVoter,
    /// A burst of 1,000 watch streams and 1,000 snapshot requests of a 1,000-flag namespace
    /// against one random member, the streams held open for the fault's hold (`load.rs`).
    LoadBurst,
}

/// Runs faults from `faults` one after another until `until` (each kind once first, in a
/// seeded order, then seeded random picks), each held 1.5-3 s and followed by 1-2 s of calm,
/// and leaves the cluster healed.
pub async fn run(
    cluster: &mut Cluster,
    rec: Arc<Recorder>,
    faults: &[Fault],
    seed: u64,
    until: Instant,
) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut first_round: Vec<Fault> = faults.to_vec();
    first_round.dedup();
    first_round.shuffle(&mut rng);
    let mut injected = 0;
    // Let the workload start before the first fault.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    while Instant::now() + Duration::from_secs(2) < until && injected < 1000 {
        // Every kind once, in a seeded order, then seeded random picks.
        let Some(&fault) = first_round
            .get(injected)
            .or_else(|| faults.choose(&mut rng))
        else {
            break;
        };
        let hold = Duration::from_millis(rng.gen_range(1500..3000));
        // Membership changes: the members of this step.
        let ids = cluster.ids();
        let leader = cluster.leader().await;
        let random = *ids.choose(&mut rng).unwrap_or(&1);
        let follower = ids
            .iter()
            .copied()
            .filter(|i| Some(*i) != leader)
            .collect::<Vec<_>>()
            .choose(&mut rng)
            .copied()
            .unwrap_or(random);
        let target_leader = leader.unwrap_or(random);
        injected += 1;
        match fault {
            Fault::Kill | Fault::KillLeader => {
                let id = if fault == Fault::Kill {
                    random
                } else {
                    target_leader
                };
                rec.nemesis(format!("kill -9 node {id}"));
                cluster.kill(id).await;
                tokio::time::sleep(hold).await;
                rec.nemesis(format!("restart node {id}"));
                cluster.restart(id).await?;
            }
            Fault::Pause | Fault::PauseLeader => {
                let id = if fault == Fault::Pause {
                    random
                } else {
                    target_leader
                };
                rec.nemesis(format!("SIGSTOP node {id}"));
                cluster.pause(id, true);
                tokio::time::sleep(hold).await;
                rec.nemesis(format!("SIGCONT node {id}"));
                cluster.pause(id, false);
            }
            Fault::IsolateLeader
            | Fault::IsolateFollower
            | Fault::MajorityMinority
            | Fault::Bridge => {
                let groups = match fault {
                    Fault::IsolateLeader => split(&ids, &[target_leader]),
                    Fault::IsolateFollower => split(&ids, &[follower]),
                    Fault::MajorityMinority => {
                        let mut s = ids.clone();
                        s.shuffle(&mut rng);
                        s.truncate(ids.len() / 2);
                        split(&ids, &s)
                    }
                    _ => {
                        let mut s = ids.clone();
                        s.shuffle(&mut rng);
                        let half = s.len() / 2;
                        // The middle node (s[half]) is in neither group: it keeps both sides.
                        vec![s[..half].to_vec(), s[half + 1..].to_vec()]
                    }
                };
                rec.nemesis(format!("partition {groups:?} ({fault:?})"));
                cluster.partition(&groups);
                tokio::time::sleep(hold).await;
                rec.nemesis("heal".into());
                cluster.heal();
            }
            Fault::ReplaceVoter => {
                let id = cluster.start_node().await?;
                rec.nemesis(format!("add learner node {id}"));
                cluster.add_learner(id).await?;
                rec.nemesis(format!("promote node {id}"));
                cluster.promote(id).await?;
                let victim = cluster
                    .voters()
                    .into_iter()
                    .filter(|v| Some(*v) != leader && *v != id)
                    .collect::<Vec<_>>()
                    .choose(&mut rng)
                    .copied();
                if let Some(v) = victim {
                    rec.nemesis(format!("remove voter node {v}"));
                    cluster.remove(v).await?;
                }
            }
            Fault::LoadBurst => {
                let api = cluster.node(random).api.clone();
                rec.nemesis(format!(
                    "load burst on node {random}: {} streams and {} snapshot requests",
                    crate::load::STREAMS,
                    crate::load::SNAPSHOTS
                ));
                let got = crate::load::burst(&api, hold).await;
                rec.nemesis(format!("load burst on node {random} over: {got}"));
            }
            Fault::Flapping => {
                let end = Instant::now() + hold;
                let mut flips = 0;
                while Instant::now() < end && flips < 50 {
                    flips += 1;
                    let mut s = ids.clone();
                    s.shuffle(&mut rng);
                    s.truncate(ids.len() / 2);
                    let groups = split(&ids, &s);
                    rec.nemesis(format!("flap: partition {groups:?}"));
                    cluster.partition(&groups);
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(200..400))).await;
                    cluster.heal();
                    rec.nemesis("flap: heal".into());
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(200..400))).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2000))).await;
    }
    // Leave everything running and connected.
    for id in cluster.ids() {
        if cluster.node(id).health != Health::Running {
            rec.nemesis(format!("final heal of node {id}"));
        }
    }
    cluster.heal_all().await?;
    Ok(injected)
}

fn split(ids: &[u64], side: &[u64]) -> Vec<Vec<u64>> {
    vec![
        side.to_vec(),
        ids.iter().copied().filter(|i| !side.contains(i)).collect(),
    ]
}
