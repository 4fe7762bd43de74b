//! The watch hub: one task per node turns each applied change into its SSE frame once and
//! hands it to the streams of that namespace only, through one bounded broadcast channel per
//! watched namespace. Once per tick it also decides, for every stream at once, what a heartbeat
//! says (the revision delivered, the staleness proof) and whether credentials may have been
//! revoked, so a stream does no work of its own between events. A stream that falls behind its
//! channel's buffer is closed (it resumes with `Last-Event-ID`); it can never block the others
//! or grow memory. Streams on connections taken over from hyper are held by the writer shards
//! (`watch_writer.rs`), which get every message once, on a channel of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use flagstaff_raft_store::{AppliedBatch, Change, ChangeKind, StateHandle};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::bounded_read::Proofs;
use crate::watch_writer::{Control, Joined, ShardMessage};

/// Messages buffered per watched namespace (one per apply that touched it, plus one per tick)
/// before a slow stream is dropped. Allocated only for namespaces someone watches.
pub const NAMESPACE_BUFFER: usize = 1024;

/// Messages buffered for the writer shards before one that falls behind drops its streams.
const SHARD_BUFFER: usize = 4096;

/// What the streams of one namespace receive, in order.
#[derive(Debug, Clone)]
pub enum HubMessage {
    /// The namespace's changes of one apply, in revision order: (revision, `change` frame).
    Changes(Arc<[(u64, Bytes)]>),
    /// A snapshot replaced the state, or the hub fell behind: resynchronise from the state.
    Reset,
    /// Once per tick, after every change up to `revision` was handed out.
    Tick(Arc<Tick>),
}

/// The node's state at one tick, the same for every stream.
#[derive(Debug)]
pub struct Tick {
    /// Every applied change up to this revision reached the namespace channels before this
    /// tick.
    pub revision: u64,
    /// The node's staleness proof (`None`: it has none).
    pub staleness_ms: Option<u64>,
    /// Moves whenever an apply may have removed credentials (an SDK key revoked, a namespace
    /// deleted, a snapshot installed): streams re-check their key only then, not every tick.
    pub credentials_epoch: u64,
    /// `heartbeat` {revision, staleness_ms}, built once, when the proof exists and the hub is
    /// caught up.
    pub heartbeat: Option<Bytes>,
}

impl Tick {
    /// Why a stream that promises at most `bound_ms` of staleness must end at this tick, if
    /// it must.
    pub fn stale_beyond(&self, bound_ms: u64) -> Option<String> {
        match self.staleness_ms {
            Some(s) if s <= bound_ms => None,
            other => Some(format!(
                "this node cannot prove its data is at most {bound_ms} ms stale (proof: {other:?} ms)"
            )),
        }
    }
}

/// The credentials epoch a stream last checked its key at (0: at its start).
#[derive(Debug, Default)]
pub struct CredentialsSeen(u64);

impl CredentialsSeen {
    /// Whether the stream's key is gone: `still_valid` (which takes the state lock) is asked
    /// only when the tick's epoch moved since the last check.
    pub fn revoked(&mut self, tick: &Tick, still_valid: impl FnOnce() -> bool) -> bool {
        if tick.credentials_epoch == self.0 {
            return false;
        }
        self.0 = tick.credentials_epoch;
        !still_valid()
    }
}

/// A watched namespace: the channel of its streams served by hyper, and how many streams the
/// writer shards hold on it.
struct Watched {
    tx: broadcast::Sender<HubMessage>,
    in_shards: usize,
}

impl Watched {
    fn idle(&self) -> bool {
        self.tx.receiver_count() == 0 && self.in_shards == 0
    }
}

/// The watched namespaces. `None` once the node stops: no new subscriptions.
type Channels = Option<HashMap<String, Watched>>;

#[derive(Clone)]
pub struct WatchHub {
    channels: Arc<Mutex<Channels>>,
    /// Each writer shard's inputs (`watch_writer.rs`).
    shards: Arc<[tokio::sync::mpsc::UnboundedSender<Control>]>,
    next_shard: Arc<std::sync::atomic::AtomicUsize>,
}

impl WatchHub {
    /// Starts the hub's task, which ticks every `tick` and ends when `stopping` resolves (the
    /// node stops); every stream's channel then closes, so the streams end too.
    pub fn spawn(
        state: StateHandle,
        proofs: Arc<Proofs>,
        tick: Duration,
        stopping: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        let (shard_tx, _) = broadcast::channel::<ShardMessage>(SHARD_BUFFER);
        let controls: Vec<_> = (0..count)
            .map(|_| tokio::sync::mpsc::unbounded_channel::<Control>())
            .collect();
        let hub = Self {
            channels: Arc::new(Mutex::new(Some(HashMap::new()))),
            shards: controls.iter().map(|(tx, _)| tx.clone()).collect(),
            next_shard: Arc::default(),
        };
        let mut shards = tokio::task::JoinSet::new();
        for (tx, rx) in controls {
            let run = crate::watch_writer::run_shard(hub.clone(), tx, rx, shard_tx.subscribe());
            shards.spawn(run);
        }
        let channels = hub.channels.clone();
        let mut rx = state.subscribe_batches();
        let task = tokio::spawn(async move {
            let shard_tx = shard_tx;
            tokio::pin!(stopping);
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut delivered = state.applied().revision;
            let mut epoch = 0u64;
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(batch) => {
                            if may_remove_credentials(&batch, delivered) {
                                epoch += 1;
                            }
                            delivered = delivered.max(batch.revision);
                            publish(&channels, &shard_tx, &batch);
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(skipped = n, "watch hub fell behind; streams resynchronise");
                            epoch += 1;
                            delivered = state.applied().revision;
                            send_all(&channels, &shard_tx, HubMessage::Reset);
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = ticker.tick() => {
                        let tick = tick_of(delivered, state.applied().revision, proofs.staleness_ms(), epoch);
                        {
                            // Namespaces nobody watches any more give their buffer back.
                            let mut guard = channels.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(map) = guard.as_mut() {
                                map.retain(|_, w| !w.idle());
                            }
                        }
                        send_all(&channels, &shard_tx, HubMessage::Tick(Arc::new(tick)));
                    }
                    _ = &mut stopping => break,
                }
            }
            // Dropping the senders closes every stream's channel, and the shards' (which then
            // close their streams and end).
            channels.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(shard_tx);
            while shards.join_next().await.is_some() {}
        });
        (hub, task)
    }

    /// Gives a stream whose initial frames are written to a writer shard (round robin). Once
    /// the hub has stopped, the stream is dropped, which closes its connection.
    pub fn join(&self, joined: Joined) {
        let n = self
            .next_shard
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.shards[n % self.shards.len()].send(Control::Join(Box::new(joined)));
    }

    /// A shard holds a stream of `ns`: its frames keep being built.
    pub fn hold(&self, ns: &str) {
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = guard.as_mut() {
            map.entry(ns.to_string())
                .or_insert_with(|| Watched {
                    tx: broadcast::channel(NAMESPACE_BUFFER).0,
                    in_shards: 0,
                })
                .in_shards += 1;
        }
    }

    /// A shard let go of a stream of `ns`.
    pub fn release(&self, ns: &str) {
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = guard.as_mut().and_then(|map| map.get_mut(ns)) {
            w.in_shards = w.in_shards.saturating_sub(1);
        }
    }

    /// The messages of namespace `ns` from now on; `None` once the node is stopping.
    pub fn subscribe(&self, ns: &str) -> Option<broadcast::Receiver<HubMessage>> {
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let map = guard.as_mut()?;
        if let Some(w) = map.get(ns) {
            return Some(w.tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(NAMESPACE_BUFFER);
        map.insert(ns.to_string(), Watched { tx, in_shards: 0 });
        Some(rx)
    }
}

/// Whether `batch` may have removed credentials: a snapshot, a namespace deleted (its keys go
/// with it), or any revision spent outside namespaces (SDK keys and admin tokens; creations
/// too, which only costs a needless re-check).
fn may_remove_credentials(batch: &AppliedBatch, delivered: u64) -> bool {
    let outside_namespaces = batch.revision.saturating_sub(delivered) > batch.changes.len() as u64;
    let namespace_deleted = batch.changes.iter().any(|c| {
        c.items
            .iter()
            .any(|i| i.kind == ChangeKind::Namespace && i.after.is_none())
    });
    batch.reset || outside_namespaces || namespace_deleted
}

/// Hands `msg` to every namespace channel, then to the shards.
fn send_all(channels: &Mutex<Channels>, shards: &broadcast::Sender<ShardMessage>, msg: HubMessage) {
    {
        let guard = channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = guard.as_ref() {
            for w in map.values() {
                let _ = w.tx.send(msg.clone());
            }
        }
    }
    let _ = shards.send(ShardMessage { ns: None, msg });
}

/// Hands `batch` to the channels of the namespaces it changed (each frame built once, and
/// only for namespaces someone watches), or a reset to every channel; each namespace's
/// message reaches its channel before the shards (see `watch_writer.rs::Shard::join`).
fn publish(
    channels: &Mutex<Channels>,
    shards: &broadcast::Sender<ShardMessage>,
    batch: &AppliedBatch,
) {
    // Deliberate break, test builds only (see fault_injection.rs).
    if batch.reset && !crate::fault_injection::watch_skips_snapshot() {
        send_all(channels, shards, HubMessage::Reset);
        return;
    }
    let mut by_ns: Vec<(&str, Vec<&Change>)> = Vec::new();
    for c in &batch.changes {
        match by_ns.iter_mut().find(|(ns, _)| *ns == c.ns) {
            Some((_, changes)) => changes.push(c),
            None => by_ns.push((&c.ns, vec![c])),
        }
    }
    // The senders are taken under the lock and the frames built after it, so subscribing
    // never waits on serialization.
    let watched: Vec<_> = {
        let guard = channels.lock().unwrap_or_else(|e| e.into_inner());
        let Some(map) = guard.as_ref() else { return };
        by_ns
            .into_iter()
            .filter_map(|(ns, changes)| map.get(ns).map(|w| (ns, w.tx.clone(), changes)))
            .collect()
    };
    for (ns, tx, changes) in watched {
        let frames: Arc<[(u64, Bytes)]> = changes
            .iter()
            .map(|c| (c.revision, sse_frame("change", c.revision, &change_json(c))))
            .collect();
        // No subscribers left is fine.
        let _ = tx.send(HubMessage::Changes(frames.clone()));
        let _ = shards.send(ShardMessage {
            ns: Some(Arc::from(ns)),
            msg: HubMessage::Changes(frames),
        });
    }
}

fn tick_of(delivered: u64, applied: u64, staleness_ms: Option<u64>, epoch: u64) -> Tick {
    let caught_up = delivered >= applied;
    let heartbeat = match staleness_ms {
        Some(s) if caught_up => Some(sse_frame_no_id(
            "heartbeat",
            &json!({"revision": delivered, "staleness_ms": s}),
        )),
        _ => None,
    };
    Tick {
        revision: delivered,
        staleness_ms,
        credentials_epoch: epoch,
        heartbeat,
    }
}

/// `{revision, prev_revision, upserted: {flags, segments}, deleted: {flags, segments}}`.
pub fn change_json(c: &Change) -> Value {
    let (mut up_flags, mut up_segments) = (Map::new(), Map::new());
    let (mut del_flags, mut del_segments) = (Vec::new(), Vec::new());
    for item in &c.items {
        match (item.kind, &item.after) {
            (ChangeKind::Flag, Some(def)) => {
                up_flags.insert(
                    item.key.clone(),
                    def.json_or_null(&c.ns, item.kind, &item.key),
                );
            }
            (ChangeKind::Segment, Some(def)) => {
                up_segments.insert(
                    item.key.clone(),
                    def.json_or_null(&c.ns, item.kind, &item.key),
                );
            }
            (ChangeKind::Flag, None) => del_flags.push(item.key.clone()),
            (ChangeKind::Segment, None) => del_segments.push(item.key.clone()),
            (ChangeKind::Namespace, _) => {}
        }
    }
    json!({
        "revision": c.revision,
        "prev_revision": c.prev_revision,
        "upserted": {"flags": up_flags, "segments": up_segments},
        "deleted": {"flags": del_flags, "segments": del_segments},
    })
}

/// Counts open watch streams per caller, refusing more than `max` at once.
pub struct StreamSlots {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One open stream; dropping it frees the slot.
pub struct StreamSlot {
    caller: String,
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl StreamSlots {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for `caller`, or `None` if it already has `max` streams open.
    pub fn acquire(&self, caller: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(caller.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            caller: caller.to_string(),
            open: self.open.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// One Server-Sent Events frame. JSON has no raw newlines, so `data` is one line.
pub fn sse_frame(event: &str, id: u64, data: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"))
}

/// A frame without an id (heartbeats and `stale` do not move the resume point).
pub fn sse_frame_no_id(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(ns: &str, revision: u64, item: ChangeKind, after: Option<&str>) -> Arc<Change> {
        Arc::new(Change {
            revision,
            prev_revision: 0,
            at_ms: 0,
            actor: "test".into(),
            ns: ns.into(),
            items: vec![flagstaff_raft_store::ChangeItem {
                kind: item,
                key: "k".into(),
                before: None,
                after: after.map(Into::into),
            }],
        })
    }

    fn batch(revision: u64, changes: Vec<Arc<Change>>) -> AppliedBatch {
        AppliedBatch {
            revision,
            changes,
            reset: false,
        }
    }

    #[test]
    fn a_change_reaches_only_the_streams_of_its_namespace() {
        let (a, mut rx_a) = broadcast::channel(8);
        let (b, mut rx_b) = broadcast::channel(8);
        let watched = |tx| Watched { tx, in_shards: 0 };
        let channels = Mutex::new(Some(HashMap::from([
            ("a".to_string(), watched(a)),
            ("b".to_string(), watched(b)),
        ])));
        let (shards, mut rx_shards) = broadcast::channel(8);
        let flag = Some(r#"{"state":"ENABLED"}"#);
        publish(
            &channels,
            &shards,
            &batch(
                3,
                vec![
                    change("b", 2, ChangeKind::Flag, flag),
                    change("b", 3, ChangeKind::Flag, flag),
                    change("c", 4, ChangeKind::Flag, flag),
                ],
            ),
        );
        assert!(rx_a.try_recv().is_err(), "namespace a heard of b's changes");
        match rx_b.try_recv() {
            Ok(HubMessage::Changes(frames)) => {
                let revisions: Vec<u64> = frames.iter().map(|(r, _)| *r).collect();
                assert_eq!(
                    revisions,
                    [2, 3],
                    "both of b's changes, in one message, in order"
                );
                assert!(std::str::from_utf8(&frames[0].1)
                    .is_ok_and(|f| f.starts_with("id: 2\nevent: change\n")));
            }
            other => panic!("b got {other:?}"),
        }
        assert!(rx_b.try_recv().is_err(), "one message per apply");
        // The shards get b's changes once, named, after its channel did.
        match rx_shards.try_recv() {
            Ok(ShardMessage {
                ns: Some(ns),
                msg: HubMessage::Changes(frames),
            }) => assert_eq!((&*ns, frames.len()), ("b", 2)),
            other => panic!("the shards got {other:?}"),
        }
        assert!(rx_shards.try_recv().is_err(), "nothing for unwatched c");
        // A snapshot install resets every watched namespace.
        publish(
            &channels,
            &shards,
            &AppliedBatch {
                revision: 9,
                changes: Vec::new(),
                reset: true,
            },
        );
        assert!(matches!(rx_a.try_recv(), Ok(HubMessage::Reset)));
        assert!(matches!(rx_b.try_recv(), Ok(HubMessage::Reset)));
        assert!(matches!(
            rx_shards.try_recv(),
            Ok(ShardMessage {
                ns: None,
                msg: HubMessage::Reset
            })
        ));
    }

    #[test]
    fn credentials_are_rechecked_only_after_applies_that_may_remove_them() {
        let flag = Some("{}");
        // Two flag writes, revisions 11 and 12, after 10: nothing outside namespaces.
        let writes = batch(
            12,
            vec![
                change("a", 11, ChangeKind::Flag, flag),
                change("a", 12, ChangeKind::Flag, flag),
            ],
        );
        assert!(!may_remove_credentials(&writes, 10));
        // Revision 13 spent outside namespaces (an SDK key revoked, say).
        assert!(may_remove_credentials(&batch(13, Vec::new()), 12));
        // A deleted namespace takes its keys along.
        let deleted = batch(14, vec![change("a", 14, ChangeKind::Namespace, None)]);
        assert!(may_remove_credentials(&deleted, 13));
        let reset = AppliedBatch {
            revision: 14,
            changes: Vec::new(),
            reset: true,
        };
        assert!(may_remove_credentials(&reset, 14));
    }

    #[test]
    fn a_tick_claims_a_heartbeat_only_when_the_hub_has_caught_up_and_a_proof_exists() {
        let t = tick_of(7, 7, Some(40), 2);
        let hb = t
            .heartbeat
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(
            hb.as_deref(),
            Some("event: heartbeat\ndata: {\"revision\":7,\"staleness_ms\":40}\n\n")
        );
        assert!(
            tick_of(6, 7, Some(40), 2).heartbeat.is_none(),
            "behind the applied state"
        );
        assert!(tick_of(7, 7, None, 2).heartbeat.is_none(), "no proof");
    }

    #[test]
    fn a_stream_ends_beyond_its_bound_and_rechecks_its_key_only_when_the_epoch_moves() {
        let tick = tick_of(7, 7, Some(40), 2);
        assert_eq!(tick.stale_beyond(40), None);
        let msg = tick.stale_beyond(39).unwrap_or_default();
        assert!(
            msg.contains("at most 39 ms stale (proof: Some(40) ms)"),
            "{msg}"
        );
        assert!(
            tick_of(7, 7, None, 2).stale_beyond(u64::MAX).is_some(),
            "no proof is stale"
        );

        let mut seen = CredentialsSeen::default();
        let mut asked = 0;
        assert!(
            !seen.revoked(&tick, || {
                asked += 1;
                true
            }),
            "epoch 2 after 0: checked, valid"
        );
        assert!(
            !seen.revoked(&tick, || {
                asked += 1;
                false
            }),
            "same epoch: not asked again"
        );
        assert_eq!(asked, 1);
        assert!(
            seen.revoked(&tick_of(8, 8, Some(1), 3), || false),
            "epoch moved: asked, gone"
        );
    }
}
