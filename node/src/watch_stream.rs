//! One watch stream's state between the frames it sends: what each hub message makes it send
//! (`take`), whoever writes the frames. A stream starts on its namespace's hub channel; served
//! by hyper it stays there and yields one frame at a time (`next_frame`); on a connection taken
//! over it joins a writer shard (`watch_writer.rs`), which hands it the messages of its
//! namespace and writes what it queues.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use flagstaff_api::sdk::{ErrorEvent, NamespaceSnapshot, StaleEvent};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::auth::Caller;
use crate::metrics::Open;
use crate::node::Node;
use crate::takeover::TakeOver;
use crate::watch_hub::{sse_frame, sse_frame_no_id, CredentialsSeen, HubMessage, StreamSlot, Tick};

/// Frames a stream may have queued and not sent before it counts as a slow subscriber and is
/// closed (its client resumes with `Last-Event-ID`): the depth of a hub channel.
pub const MAX_QUEUED: usize = crate::watch_hub::NAMESPACE_BUFFER;

/// A watch stream: who reads it, where its client stands, and what is left to send.
pub struct WatchStream {
    pub(crate) node: Arc<Node>,
    caller: Caller,
    pub(crate) ns: String,
    bound_ms: u64,
    /// The revision this stream's client holds everything up to.
    last: u64,
    /// When the key was last checked (at the start, just now).
    credentials: CredentialsSeen,
    /// Frames decided but not yet sent.
    pub(crate) pending: VecDeque<Bytes>,
    /// The namespace's hub channel, until the stream joins a writer shard.
    pub(crate) rx: Option<broadcast::Receiver<HubMessage>>,
    /// Set once a closing frame (`stale`, `error`) is queued: the stream ends after it.
    pub(crate) ended: bool,
    _open: Open,
    _slot: StreamSlot,
}

/// Where a stream starts: after everything up to `last`, with `initial` (its snapshot, or
/// the changes it missed) to send first.
pub struct Start {
    pub node: Arc<Node>,
    pub caller: Caller,
    pub ns: String,
    pub bound_ms: u64,
    pub last: u64,
    pub initial: Vec<Bytes>,
    pub rx: broadcast::Receiver<HubMessage>,
    pub slot: StreamSlot,
}

impl WatchStream {
    pub fn new(s: Start) -> Self {
        Self {
            _open: Open::new(&s.node.metrics.watch_streams),
            node: s.node,
            caller: s.caller,
            ns: s.ns,
            bound_ms: s.bound_ms,
            last: s.last,
            credentials: CredentialsSeen::default(),
            pending: s.initial.into(),
            rx: Some(s.rx),
            ended: false,
            _slot: s.slot,
        }
    }

    /// The stream as a response can carry it both ways, whichever asks first: a body that
    /// hyper polls (`next_frame`), and a [`TakeOver`] that, on a connection the listener takes
    /// over from hyper, gives it to a writer shard (`watch_writer.rs`).
    pub fn served(self) -> (Body, TakeOver) {
        let cell = Arc::new(Mutex::new(Some(self)));
        let take = |cell: &Mutex<Option<WatchStream>>| {
            cell.lock().unwrap_or_else(|e| e.into_inner()).take()
        };
        let body_cell = cell.clone();
        let body = Body::from_stream(futures::stream::unfold(None, move |s| {
            let first = s.is_none().then(|| take(&body_cell)).flatten();
            async move {
                let mut s: WatchStream = s.or(first)?;
                let frame = s.next_frame().await?;
                Some((Ok::<_, std::convert::Infallible>(frame), Some(s)))
            }
        }));
        let take_over = TakeOver::new(move |sock, permit| async move {
            if let Some(stream) = take(&cell) {
                let hub = stream.node.hub.clone();
                crate::watch_writer::start(&hub, stream, sock, permit).await;
            }
        });
        (body, take_over)
    }

    /// The next frame to send, from the hub channel, or `None` when the stream ends: the node
    /// stops, the stream fell behind its channel (its client resumes from its last event id),
    /// the node can no longer prove its bound, or the key was revoked.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.node.metrics.events_sent.inc();
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            let msg = match self.rx.as_mut()?.recv().await {
                Ok(msg) => msg,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.node.metrics.slow_subscribers.inc();
                    return None;
                }
                // The node is stopping: end the stream cleanly, so its client moves to
                // another node at once.
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            self.take(&msg).await?;
        }
    }

    /// Queues what `msg` makes this stream send (nothing once its closing frame is queued);
    /// `None` if the stream cannot go on (its snapshot could not be rebuilt after a reset).
    pub async fn take(&mut self, msg: &HubMessage) -> Option<()> {
        if self.ended {
            return Some(());
        }
        match msg {
            HubMessage::Changes(frames) => self.changes(frames),
            HubMessage::Reset => self.resynchronise().await?,
            HubMessage::Tick(tick) => self.on_tick(tick),
        }
        Some(())
    }

    /// The frames of changes after the client's revision.
    fn changes(&mut self, frames: &[(u64, Bytes)]) {
        for (revision, frame) in frames {
            if *revision > self.last {
                self.pending.push_back(frame.clone());
                self.last = *revision;
            }
        }
    }

    /// After a snapshot install: the namespace's snapshot (or an empty one if it is gone).
    async fn resynchronise(&mut self) -> Option<()> {
        let node = &self.node;
        let (snapshot, revision) = {
            let state = node.state.read();
            (node.snapshots.get(&state, &self.ns), state.revision())
        };
        match snapshot {
            Some(snap) => {
                let chunks = snap.sse_chunks(&self.ns, &node.cluster_id).await?;
                self.pending.extend(chunks.iter().cloned());
            }
            // Deleted: an empty snapshot says so without a gap.
            None => {
                self.pending
                    .push_back(deleted_snapshot_frame(&self.ns, &node.cluster_id, revision))
            }
        }
        self.last = self.last.max(revision);
        Some(())
    }

    /// A tick: end the stream if its key is gone or the node cannot prove its bound, else a
    /// heartbeat once every applied change has been sent.
    fn on_tick(&mut self, tick: &Tick) {
        let (caller, node) = (&self.caller, &self.node);
        if self.credentials.revoked(tick, || caller.still_valid(node)) {
            let event = ErrorEvent {
                message: "the SDK key was revoked".into(),
            };
            self.close_with(sse_frame_no_id("error", &event_json(&event)));
            return;
        }
        if let Some(msg) = tick.stale_beyond(self.bound_ms) {
            let event = StaleEvent {
                revision: self.last,
                message: msg,
            };
            self.close_with(sse_frame_no_id("stale", &event_json(&event)));
            return;
        }
        if let Some(hb) = &tick.heartbeat {
            if tick.revision >= self.last {
                self.last = tick.revision;
                self.pending.push_back(hb.clone());
            }
        }
    }

    fn close_with(&mut self, frame: Bytes) {
        self.pending.push_back(frame);
        self.ended = true;
    }
}

/// The `snapshot` event of a namespace that no longer exists: empty, at `revision`.
pub fn deleted_snapshot_frame(ns: &str, cluster_id: &str, revision: u64) -> Bytes {
    let body: NamespaceSnapshot = NamespaceSnapshot {
        namespace: ns.to_string(),
        cluster_id: cluster_id.to_string(),
        revision,
        flags: Default::default(),
        segments: Default::default(),
    };
    sse_frame("snapshot", revision, &event_json(&body))
}

/// An event's data as JSON (the frames take a `Value`).
pub fn event_json(event: &impl serde::Serialize) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
}
