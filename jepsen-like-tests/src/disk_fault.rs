//! A node whose disk fails stops being a node: with the fault-injection build of the node,
//! a follower's and then the leader's store start failing every write (`FLAGSTAFF_FAULT_STORAGE_FAIL_FILE`,
//! as a full or broken disk would). Each must answer 503 on `/healthz`, log the fatal error and
//! exit non-zero by itself, while the other nodes keep accepting writes; once the first disk is
//! repaired and its node restarted, every acknowledged write reads back.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::json;
use tokio::time::Instant;

use crate::cluster::{Cluster, NodeOptions, ADMIN_TOKEN};

const FAIL_FILE: &str = "FAIL-DISK";
const LIMIT: Duration = Duration::from_secs(30);

/// Runs the scenario in `dir` with the node binary `bin`; true when every check held.
pub async fn run(bin: &Path, dir: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let opts = NodeOptions {
        env: vec![(
            "FLAGSTAFF_FAULT_STORAGE_FAIL_FILE".to_string(),
            FAIL_FILE.to_string(),
        )],
        args: Vec::new(),
        ..Default::default()
    };
    let mut c = Cluster::start(bin, dir, 3, 0, opts).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let leader = c.wait_leader(&c.ids(), LIMIT).await?;
    let (s, b) = c
        .call(
            leader,
            reqwest::Method::PUT,
            "/v1/namespaces/disk",
            Some(json!({})),
        )
        .await?;
    ensure!(s == 200, "create namespace: {s} {b}");
    let mut acknowledged = Vec::new();
    let write = |c: &Cluster, via: u64, n: usize| {
        let url = format!("{}/v1/namespaces/disk/flags/f{n}", c.node(via).api);
        let http = http.clone();
        async move {
            let body = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
            let r = http
                .put(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await?;
            anyhow::Ok(r.status().is_success())
        }
    };
    for n in 0..20 {
        ensure!(write(&c, leader, n).await?, "write f{n} before any fault");
        acknowledged.push(n);
    }

    let mut ok = true;
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("no follower")?;
    let mut next = 20;
    for (what, victim) in [("a follower", follower), ("the leader", leader)] {
        println!("disk fault: failing the disk of {what} (node {victim})");
        std::fs::write(c.node(victim).dir.join(FAIL_FILE), b"")?;
        let survivors: Vec<u64> = c
            .ids()
            .into_iter()
            .filter(|id| *id != victim && c.exited(*id).is_none())
            .collect();
        let deadline = Instant::now() + LIMIT;
        let (mut saw_503, mut status) = (false, None);
        // Writes go on through the others; the failed node must fail its health check and exit.
        while status.is_none() && Instant::now() < deadline {
            // Short: without a majority a write waits, and the failed node must be watched.
            let via = survivors[next % survivors.len()];
            let attempt = tokio::time::timeout(Duration::from_millis(300), write(&c, via, next));
            if attempt.await.is_ok_and(|w| w.unwrap_or(false)) {
                acknowledged.push(next);
            }
            next += 1;
            let health = http
                .get(format!("{}/healthz", c.node(victim).api))
                .send()
                .await;
            saw_503 |= health.is_ok_and(|r| r.status() == 503);
            status = c.exited(victim);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&c.node(victim).log).unwrap_or_default();
        let logged = log.contains("fatal storage error");
        let exited_non_zero = status.is_some_and(|s| !s.success());
        println!(
            "  node {victim}: /healthz 503 seen: {saw_503}; logged: {logged}; exit: {status:?}"
        );
        ok &= saw_503 && logged && exited_non_zero;
        if what == "a follower" {
            // Two nodes remain: they are a majority of three and keep accepting writes.
            let leader_now = c.wait_leader(&survivors, LIMIT).await?;
            let before = acknowledged.len();
            for _ in 0..10 {
                if write(&c, leader_now, next).await.unwrap_or(false) {
                    acknowledged.push(next);
                }
                next += 1;
            }
            let accepted = acknowledged.len() - before;
            println!("  writes accepted by the remaining two: {accepted} of 10");
            ok &= accepted == 10;
        }
    }
    // No acknowledged write is lost: with the first failed disk repaired, its node restarts and
    // forms a majority with the last one; every acknowledged write reads back linearizably.
    std::fs::remove_file(c.node(follower).dir.join(FAIL_FILE))?;
    c.restart(follower).await?;
    let remaining: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    let new_leader = c.wait_leader(&remaining, LIMIT).await?;
    let mut missing = Vec::new();
    for n in &acknowledged {
        let url = format!("{}/v1/namespaces/disk/flags/f{n}", c.node(new_leader).api);
        let r = http.get(url).bearer_auth(ADMIN_TOKEN).send().await;
        if !r.is_ok_and(|r| r.status() == 200) {
            missing.push(*n);
        }
    }
    println!(
        "  after repair: {} of {} acknowledged writes read back (missing: {missing:?})",
        acknowledged.len() - missing.len(),
        acknowledged.len()
    );
    ok &= missing.is_empty();
    c.stop().await;
    println!("disk fault: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}
