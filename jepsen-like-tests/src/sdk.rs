//! Workload (e): the embedded SDK (`flagstaff-client`) pointed at every node, evaluating the
//! register flags in a loop while the faults run. Each evaluation is recorded with the revision,
//! value, reason, error and source the SDK reported; `check::sdk` judges them.

use std::sync::Arc;
use std::time::Duration;

use flagstaff_client::{context, Client};
use tokio::time::Instant;

use crate::history::{Record, SdkEval};
use crate::workload::Recorder;

/// What the evaluations return when the SDK has nothing (never a register value: those are
/// positive).
pub const CALL_SITE_DEFAULT: i64 = -1;

/// Evaluates every key of `keys` every 20 ms until `until` (at most 20,000 rounds) with one
/// client following `endpoints`, then stops the client.
pub async fn sdk_client(
    rec: Arc<Recorder>,
    endpoints: Vec<String>,
    sdk_key: String,
    namespace: &'static str,
    keys: Vec<String>,
    until: Instant,
) -> anyhow::Result<()> {
    let client = Client::builder(namespace, sdk_key)
        .endpoints(endpoints)
        // Quick failover on loopback: a stream silent for 3 s is dead.
        .heartbeat_timeout(Duration::from_secs(3))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()?;
    let ctx = context().with_targeting_key("jepsen");
    let mut rounds = 0u32;
    while Instant::now() < until && rounds < 20_000 {
        rounds += 1;
        let cluster_id = client.cluster_id();
        for key in &keys {
            let d = client.i64_details(key, &ctx, CALL_SITE_DEFAULT);
            rec.push(Record::Sdk(SdkEval {
                time_ns: rec.now_ns(),
                key: key.clone(),
                value: d.value,
                reason: d.reason.as_str().to_string(),
                error: d.error.map(|e| e.to_string()),
                source: d.source.as_str().to_string(),
                revision: d.revision,
                stale: d.stale,
                cluster_id: cluster_id.clone(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
