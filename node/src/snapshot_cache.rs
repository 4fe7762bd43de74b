//! A namespace's flags and segments serialized once per change and shared: every snapshot
//! request and every watch stream's `snapshot` event of that namespace, at any revision until
//! its next change, sends the same bytes. The first request after a change copies the
//! namespace's definitions out of the state (under the read lock, no parsing) and serializes
//! them on a blocking thread, off the async workers; concurrent requests wait for that one
//! build. One entry per namespace is kept (the latest).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use flagstaff_raft_store::{ChangeKind, Definition, Namespace, State};
use futures::future::{BoxFuture, FutureExt, Shared};

/// `"flags":{…},"segments":{…}` of one namespace at one change.
type Build = Shared<BoxFuture<'static, Option<Bytes>>>;

#[derive(Default)]
pub struct SnapshotCache {
    /// Namespace → (its last change, the build of its body at that change).
    entries: Mutex<HashMap<String, (u64, Build)>>,
}

/// What a reader of the state takes away: the revision read and the namespace's body.
pub struct Snapshot {
    pub revision: u64,
    build: Build,
}

impl SnapshotCache {
    /// For namespace `ns` in `state` (`None` if it does not exist): the current revision and the
    /// shared build of its definitions. Call under the state's read lock; O(1) unless the
    /// namespace changed since the last build, then one copy of its definitions.
    pub fn get(&self, state: &State, ns: &str) -> Option<Snapshot> {
        let space = state.namespace(ns)?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let build = match entries.get(ns) {
            Some((change, build)) if *change == space.last_change => build.clone(),
            current => {
                let build = start_build(ns, space);
                // Never replace a newer entry (a reader that read the state earlier).
                if current.is_none_or(|(change, _)| *change < space.last_change) {
                    entries.insert(ns.to_string(), (space.last_change, build.clone()));
                }
                build
            }
        };
        Some(Snapshot {
            revision: state.revision(),
            build,
        })
    }
}

impl Snapshot {
    /// The JSON document `{"namespace":…,"cluster_id":…,"revision":…,"flags":…,"segments":…}`
    /// as chunks (the large middle one shared), or `None` if the build failed.
    pub async fn json_chunks(&self, ns: &str, cluster_id: &str) -> Option<[Bytes; 3]> {
        let body = self.build.clone().await?;
        let head = format!(
            "{{\"namespace\":{},\"cluster_id\":{},\"revision\":{},",
            json_string(ns),
            json_string(cluster_id),
            self.revision
        );
        Some([Bytes::from(head), body, Bytes::from_static(b"}")])
    }

    /// The watch stream's `snapshot` event, as chunks to send in order.
    pub async fn sse_chunks(&self, ns: &str, cluster_id: &str) -> Option<[Bytes; 3]> {
        let [head, body, tail] = self.json_chunks(ns, cluster_id).await?;
        let mut prefix = format!("id: {}\nevent: snapshot\ndata: ", self.revision).into_bytes();
        prefix.extend_from_slice(&head);
        let mut suffix = tail.to_vec();
        suffix.extend_from_slice(b"\n\n");
        Some([Bytes::from(prefix), body, Bytes::from(suffix)])
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Takes the namespace's definitions (cheap: shared, no copy or parsing) and serializes them on
/// a blocking thread; the result is shared by everyone who awaits it.
fn start_build(ns: &str, space: &Namespace) -> Build {
    let copy = |kind| -> Vec<(String, Definition)> {
        space
            .items(kind)
            .iter()
            .map(|(k, i)| (k.clone(), i.definition.clone()))
            .collect()
    };
    let (flags, segments) = (copy(ChangeKind::Flag), copy(ChangeKind::Segment));
    let ns = ns.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(
            flags
                .iter()
                .chain(&segments)
                .map(|(k, d)| k.len() + d.len() + 4)
                .sum::<usize>()
                + 32,
        );
        for (name, items, kind) in [
            ("flags", &flags, ChangeKind::Flag),
            ("segments", &segments, ChangeKind::Segment),
        ] {
            if name == "segments" {
                out.push(b',');
            }
            out.extend_from_slice(format!("\"{name}\":{{").as_bytes());
            for (i, (key, definition)) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(json_string(key).as_bytes());
                out.push(b':');
                // Stored definitions are compact JSON written by the node, parsed when they
                // entered the state; one that did not parse (corruption) is sent as null, and
                // logged.
                match definition.stored_json(&ns, kind, key) {
                    Ok(_) => out.extend_from_slice(definition.text().as_bytes()),
                    Err(_) => out.extend_from_slice(b"null"),
                }
            }
            out.push(b'}');
        }
        Bytes::from(out)
    });
    let shared: BoxFuture<'static, Option<Bytes>> = async move { task.await.ok() }.boxed();
    shared.shared()
}

/// A stream of body chunks for a response.
pub fn body_of(chunks: [Bytes; 3]) -> axum::body::Body {
    axum::body::Body::from_stream(futures::stream::iter(
        chunks.map(Ok::<_, std::convert::Infallible>),
    ))
}
