//! `flagstaff backup save|restore`: a backup file from any node of a running cluster, and the
//! data dirs of a new cluster seeded from one (see `raft-store/src/backup.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use flagstaff_raft_store::backup::Backup;
use flagstaff_raft_store::marker;

use crate::client::Conn;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Write a backup of the whole state, as of this request (a linearizable read), to FILE.
    Save {
        #[command(flatten)]
        conn: Conn,
        file: PathBuf,
    },
    /// Seed the empty data dir of one node of a NEW cluster from FILE (run it for every node,
    /// then start them and `cluster init` them). The new cluster id makes every SDK drop what
    /// it held and load the restored state as a fresh start.
    Restore {
        file: PathBuf,
        /// The new node's data dir (must not exist yet, or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new cluster's id; must differ from the backed-up cluster's.
        #[arg(long)]
        cluster_id: String,
    },
}

/// `flagstaff cluster force-new`: a backup file from the data dir of a stopped node, when the
/// cluster lost its majority for good (see the README's "Disaster recovery").
pub fn force_new(data_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let marker = marker::read(data_dir)?
        .with_context(|| format!("{} is not a node's data dir", data_dir.display()))?;
    let state = flagstaff_raft_store::backup::read_applied(&data_dir.join(marker::DB_DIR))
        .context("reading the node's state (is the node stopped?)")?;
    let backup = Backup::of(&state, &marker.cluster_id, flagstaff_node::clock::wall_ms())?;
    write_file(file, &backup.to_bytes()?)?;
    println!(
        "wrote {} from node {} of cluster {}: {} namespaces at revision {} (what this node had \
         applied). Restore it into the new cluster's data dirs with `flagstaff backup restore`.",
        file.display(),
        marker.node_id,
        marker.cluster_id,
        state.namespaces().len(),
        backup.revision
    );
    Ok(())
}

/// Writes `bytes` to `file` durably: a temporary file, fsynced, renamed.
fn write_file(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = file.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

pub async fn run(cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Save { conn, file } => save(&conn, &file).await,
        BackupCmd::Restore {
            file,
            data_dir,
            id,
            cluster_id,
        } => restore(&file, &data_dir, id, &cluster_id),
    }
}

async fn save(conn: &Conn, file: &Path) -> anyhow::Result<()> {
    let resp = conn
        .send(
            reqwest::Method::GET,
            "/v1/cluster/backup",
            None,
            Duration::from_secs(600),
        )
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        bail!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    // Checked before it is kept: a file that is written is one that restores.
    let backup = Backup::from_bytes(&bytes)?;
    write_file(file, &bytes)?;
    let state = backup.state()?;
    println!(
        "backed up cluster {} at revision {}: {} namespaces, {} bytes, to {}",
        backup.cluster_id,
        backup.revision,
        state.namespaces().len(),
        bytes.len(),
        file.display()
    );
    Ok(())
}

fn restore(file: &Path, data_dir: &Path, id: u64, cluster_id: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let backup = Backup::from_bytes(&bytes)?;
    if backup.cluster_id == cluster_id {
        bail!(
            "--cluster-id {cluster_id} is the backed-up cluster's id: a restored cluster needs a new \
             one, so that SDKs know its history is not the old cluster's"
        );
    }
    if !marker::is_pristine(data_dir) {
        bail!(
            "{} already holds a node's data; restore into a new, empty data dir",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let state = flagstaff_raft_store::backup::seed(&data_dir.join(marker::DB_DIR), &backup)?;
    // The marker last: a dir with a marker is a finished restore.
    marker::mark(data_dir, id, cluster_id)?;
    println!(
        "seeded {} as node {id} of cluster {cluster_id}: {} namespaces at revision {} (from cluster {})",
        data_dir.display(),
        state.namespaces().len(),
        state.revision(),
        backup.cluster_id
    );
    Ok(())
}
