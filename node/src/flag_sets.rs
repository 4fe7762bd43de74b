//! A namespace's flags as the readers use them: compiled once per change ([`FlagSetCache`],
//! for OFREP, the experiments API and the intake) and as JSON maps ([`definitions`], for the
//! SDK snapshot, the flagd export and the flagd sync service), both from the definitions the
//! state parsed once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use flagstaff_flags::FlagSet;
use flagstaff_raft_store::{ChangeKind, Definition, Namespace};
use serde_json::{Map, Value};

use crate::node::Node;

/// Compiled flag sets per namespace, rebuilt when the namespace changed.
#[derive(Default)]
pub struct FlagSetCache {
    sets: Mutex<HashMap<String, (u64, Arc<FlagSet>)>>,
}

impl FlagSetCache {
    /// The namespace's compiled flags as of the node's current state, and the namespace's last
    /// change revision; `None` if it does not exist.
    pub fn get(&self, node: &Node, ns: &str) -> Option<(u64, Arc<FlagSet>)> {
        let (last_change, flags, segments) = {
            let state = node.state.read();
            let space = state.namespace(ns)?;
            if let Some((rev, set)) = self.sets.lock().unwrap_or_else(|e| e.into_inner()).get(ns) {
                if *rev == space.last_change {
                    return Some((*rev, set.clone()));
                }
            }
            // Shared definitions (reference counts), so the compile can run outside the lock.
            let items = |kind| -> Vec<(String, Definition)> {
                let items = space.items(kind).iter();
                items
                    .map(|(k, i)| (k.clone(), i.definition.clone()))
                    .collect()
            };
            let segments = items(ChangeKind::Segment);
            (space.last_change, items(ChangeKind::Flag), segments)
        };
        // Definitions were validated before they were written; a corrupt one (logged) compiles
        // as null, an invalid flag.
        let null = Value::Null;
        let segments: BTreeMap<String, Value> = segments
            .iter()
            .map(|(k, d)| (k.clone(), d.json_or_null(ns, ChangeKind::Segment, k)))
            .collect();
        let flags = flags.iter().map(|(k, d)| {
            let json = d.stored_json(ns, ChangeKind::Flag, k);
            (k.as_str(), json.unwrap_or(&null))
        });
        let (set, _faults) = FlagSet::build(flags, &segments, &Map::new());
        let set = Arc::new(set);
        self.sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string(), (last_change, set.clone()));
        Some((last_change, set))
    }
}

/// A namespace's flags and segments as JSON maps (key → definition).
pub fn definitions(ns: &str, space: &Namespace) -> (Map<String, Value>, Map<String, Value>) {
    let parsed = |kind: ChangeKind| -> Map<String, Value> {
        space
            .items(kind)
            .iter()
            .map(|(k, i)| (k.clone(), i.definition.json_or_null(ns, kind, k)))
            .collect()
    };
    (parsed(ChangeKind::Flag), parsed(ChangeKind::Segment))
}
