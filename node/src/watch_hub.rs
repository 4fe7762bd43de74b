//! The watch hub: one task per node turns each applied change into its SSE frame once, and
//! fans the frames out to every watch stream through one bounded broadcast channel. A stream
//! that falls behind the buffer is closed (it resumes with `Last-Event-ID`); it can never block
//! the others or grow memory.

use std::sync::Arc;

use axum::body::Bytes;
use flagstaff_raft_store::{AppliedBatch, Change, ChangeKind, StateHandle};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// Frames buffered per node before a slow stream is dropped.
const HUB_BUFFER: usize = 8192;

/// One namespace change, serialized once for every subscriber.
#[derive(Debug)]
pub struct HubEvent {
    pub ns: String,
    pub revision: u64,
    pub frame: Bytes,
}

/// What subscribers receive: the changes of one apply, or a reset (snapshot installed, or the
/// hub itself fell behind) after which they resynchronise from the state.
#[derive(Debug)]
pub struct HubBatch {
    /// The cluster revision after this batch.
    pub revision: u64,
    pub reset: bool,
    pub events: Vec<HubEvent>,
}

#[derive(Clone)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<HubBatch>>,
}

impl WatchHub {
    /// Starts the hub's task, which ends when `stopping` resolves (the node stops).
    pub fn spawn(
        state: StateHandle,
        stopping: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, _) = broadcast::channel(HUB_BUFFER);
        let hub = Self { tx: tx.clone() };
        let mut rx = state.subscribe_batches();
        let task = tokio::spawn(async move {
            tokio::pin!(stopping);
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = &mut stopping => break,
                };
                let batch = match received {
                    Ok(b) => frames_of(&b),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "watch hub fell behind; streams resynchronise");
                        HubBatch {
                            revision: state.applied().revision,
                            reset: true,
                            events: Vec::new(),
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                // No subscribers is fine.
                let _ = tx.send(Arc::new(batch));
            }
        });
        (hub, task)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubBatch>> {
        self.tx.subscribe()
    }
}

fn frames_of(batch: &AppliedBatch) -> HubBatch {
    let events = batch
        .changes
        .iter()
        .map(|c| HubEvent {
            ns: c.ns.clone(),
            revision: c.revision,
            frame: sse_frame("change", c.revision, &change_json(c)),
        })
        .collect();
    HubBatch {
        revision: batch.revision,
        // Deliberate break, test builds only (see fault_injection.rs).
        reset: batch.reset && !crate::fault_injection::watch_skips_snapshot(),
        events,
    }
}

/// `{revision, prev_revision, upserted: {flags, segments}, deleted: {flags, segments}}`.
pub fn change_json(c: &Change) -> Value {
    let (mut up_flags, mut up_segments) = (Map::new(), Map::new());
    let (mut del_flags, mut del_segments) = (Vec::new(), Vec::new());
    for item in &c.items {
        match (item.kind, &item.after) {
            (ChangeKind::Flag, Some(def)) => {
                up_flags.insert(item.key.clone(), parse(&c.ns, item.kind, &item.key, def));
            }
            (ChangeKind::Segment, Some(def)) => {
                up_segments.insert(item.key.clone(), parse(&c.ns, item.kind, &item.key, def));
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

/// A stored definition as JSON. The node validated it before proposal, so a failure means the
/// state is corrupt: it is logged as an error naming the item.
pub fn parse_stored(
    ns: &str,
    kind: ChangeKind,
    key: &str,
    definition: &str,
) -> Result<Value, String> {
    serde_json::from_str(definition).map_err(|e| {
        tracing::error!(ns, kind = kind.as_str(), key, error = %e, "stored definition does not parse (state corrupt)");
        format!(
            "the stored definition of {} {key:?} in namespace {ns:?} does not parse ({e}); replace it",
            kind.as_str()
        )
    })
}

/// [`parse_stored`], with `null` for a corrupt definition (logged; readers report `null` as an
/// invalid flag or segment, never as a value).
pub fn parse(ns: &str, kind: ChangeKind, key: &str, definition: &str) -> Value {
    parse_stored(ns, kind, key, definition).unwrap_or(Value::Null)
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
