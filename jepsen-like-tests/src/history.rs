//! The recorded history: one JSON object per line, enough to re-run every checker offline.
//!
//! Times are nanoseconds on the harness's monotonic clock since the run started. An operation
//! whose outcome the client could not learn (a timeout, a 504) has `outcome: "info"` and no
//! `complete_ns`: it may or may not have taken effect, at any time after its invocation.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum F {
    /// Unconditional write of `value` to register `key`.
    Write,
    /// Write of `value` with `If-Match: "<expect_version>"`.
    Cas,
    /// `consistency=linearizable` read.
    Read,
    /// `consistency=bounded` read with `max_staleness_ms`.
    BoundedRead,
    /// Set workload: create element `key` (once, with an idempotency key and retries).
    Add,
}

/// How an operation ended, in Jepsen's terms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened, with the recorded result.
    Ok,
    /// It certainly did not happen (a refused condition, 503 `NO_LEADER`, no connection).
    Fail,
    /// Unknown: it may have happened.
    Info,
}

/// One client operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Op {
    pub process: u64,
    /// Node the request was sent to.
    pub node: u64,
    pub f: F,
    pub key: String,
    /// Write/CAS: the value written. Reads: the value read (`None`: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// CAS: the version in `If-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
    /// Reads: the item's version. Refused CAS: the `current_version` the node reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Reads: bound asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness_ms: Option<u64>,
    pub invoke_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
    /// Writes: the revision acknowledged. Reads: `Flagstaff-Revision` of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Bounded reads: `Flagstaff-Staleness-Ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One thing a watcher saw on its stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WatchEvent {
    /// One watcher follows one node across reconnects.
    pub watcher: u64,
    pub node: u64,
    /// `connect` (with `since` = the Last-Event-ID sent), `snapshot`, `change`, `heartbeat`,
    /// `stale`, `closed`, `refused`.
    pub event: String,
    pub time_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// `change`: register values upserted (key → value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<(String, i64)>,
}

/// One evaluation by the embedded SDK (workload e).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SdkEval {
    pub time_ns: u64,
    pub key: String,
    pub value: i64,
    /// OpenFeature reason (`STATIC`, `ERROR`, …).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `network`, `lkg`, `bootstrap` or `default`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub stale: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// One line of a history file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// How the run was made (seed, profile, scenario, nodes).
    Meta {
        info: serde_json::Value,
    },
    Op(Op),
    Watch(WatchEvent),
    Sdk(SdkEval),
    /// Raft snapshots node `node` installed (counted from its log after the run).
    SnapshotsInstalled {
        node: u64,
        count: u64,
    },
    /// A fault injected or healed.
    Nemesis {
        time_ns: u64,
        action: String,
    },
    /// Set workload, read linearizably after healing: element → version.
    SetFinal {
        elements: Vec<(String, u64)>,
    },
    /// The authoritative change list of a namespace after healing (audit history):
    /// (revision, keys changed).
    Changes {
        ns: String,
        changes: Vec<(u64, Vec<String>)>,
    },
}

/// Writes a history as JSON lines.
pub fn save(path: &Path, records: &[Record]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a history written by [`save`].
pub fn load(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (n, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

/// The operations of a history.
pub fn ops(records: &[Record]) -> impl Iterator<Item = &Op> {
    records.iter().filter_map(|r| match r {
        Record::Op(op) => Some(op),
        _ => None,
    })
}
