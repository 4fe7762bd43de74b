//! The replicated state and the deterministic rules that change it.
//!
//! [`State::apply_request`] is the whole business logic of the log: it is a pure function of
//! the state and the entry (no clock, no randomness, only ordered maps), so every node that
//! applies the same log reaches the same state. Every change it makes is also recorded as a row
//! operation, which the state machine writes to RocksDB in the same batch as `last_applied`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{Applied, ApplyError, Command, CommandResult, Condition, Envelope, Request};
pub use crate::definition::Definition;
use crate::experiment_data::{
    ExperimentLimits, ExperimentStore, BATCH_TAG, EVALUATED_TAG, RECORD_TAG,
};
use crate::{LogId, StoredMembership};

/// Retention bounds and write limits. They must be the same on every node, since eviction and
/// refusals are part of `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// How many changes the history keeps (oldest evicted first).
    pub history: usize,
    /// How many idempotency keys are remembered (oldest evicted first).
    pub idempotency_keys: usize,
    /// Flags per namespace.
    pub max_flags: usize,
    /// Segments per namespace.
    pub max_segments: usize,
    /// Bytes of one flag or segment definition (its JSON text).
    pub max_definition_bytes: usize,
    /// Bytes of all flag and segment definitions of one namespace together (bounds the
    /// snapshot every SDK downloads and holds).
    pub max_namespace_bytes: usize,
    /// Segments one `$ref` chain may pass through; capped at
    /// `flagstaff_flags::limits::MAX_REF_CHAIN` (the evaluator's own limit).
    pub max_ref_chain: usize,
    /// What the A/B test records keep.
    pub experiments: ExperimentLimits,
}

impl StateLimits {
    pub const DEFAULT_MAX_FLAGS: usize = 10_000;
    pub const DEFAULT_MAX_SEGMENTS: usize = 10_000;
    pub const DEFAULT_MAX_DEFINITION_BYTES: usize = 256 * 1024;
    pub const DEFAULT_MAX_NAMESPACE_BYTES: usize = 32 << 20;

    /// The `$ref` chain limit in force (never above the evaluator's).
    pub fn ref_chain(&self) -> usize {
        self.max_ref_chain
            .min(flagstaff_flags::limits::MAX_REF_CHAIN)
    }

    /// The limits a command can be checked against without the state (a definition's size; all
    /// of an import, which replaces the whole namespace), so a node refuses such a write before
    /// proposing it. `apply` checks them again, with the rest.
    pub fn check(&self, command: &Command) -> Result<(), ApplyError> {
        match command {
            Command::PutFlag { definition, .. } => {
                check_size(ChangeKind::Flag, "definition", definition, *self)
            }
            Command::PutSegment { definition, .. } => {
                check_size(ChangeKind::Segment, "definition", definition, *self)
            }
            Command::ImportFlagd {
                ns,
                flags,
                segments,
            } => import_refs(ns, flags, segments, *self).map(drop),
            _ => Ok(()),
        }
    }
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            history: 100_000,
            idempotency_keys: 100_000,
            max_flags: Self::DEFAULT_MAX_FLAGS,
            max_segments: Self::DEFAULT_MAX_SEGMENTS,
            max_definition_bytes: Self::DEFAULT_MAX_DEFINITION_BYTES,
            max_namespace_bytes: Self::DEFAULT_MAX_NAMESPACE_BYTES,
            max_ref_chain: flagstaff_flags::limits::MAX_REF_CHAIN,
            experiments: ExperimentLimits::default(),
        }
    }
}

/// A flag or segment as stored: its JSON definition and who changed it last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Revision of the item's last change.
    pub version: u64,
    /// The definition: stored as JSON text, parsed once when it entered the state.
    pub definition: Definition,
    pub updated_at_ms: u64,
    pub updated_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NamespaceWire")]
pub struct Namespace {
    pub version: u64,
    pub description: String,
    /// Revision of the latest change to anything in this namespace.
    pub last_change: u64,
    pub flags: BTreeMap<String, Item>,
    pub segments: BTreeMap<String, Item>,
    /// The `$ref` names of every flag and segment, computed once when the item is stored (in
    /// memory only; rebuilt when the state is loaded or a snapshot decoded).
    #[serde(skip)]
    refs: RefIndex,
}

/// What a namespace's items reference: item key → the segment names its definition `$ref`s,
/// `None` for a stored definition that does not parse (corruption: logged when indexed); and
/// the bytes of all its definitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RefIndex {
    flags: BTreeMap<String, Option<BTreeSet<String>>>,
    segments: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Segment → the segments that `$ref` it (the reverse of `segments`).
    segment_users: BTreeMap<String, BTreeSet<String>>,
    bytes: usize,
}

impl RefIndex {
    fn of(&self, kind: ChangeKind) -> &BTreeMap<String, Option<BTreeSet<String>>> {
        if kind == ChangeKind::Flag {
            &self.flags
        } else {
            &self.segments
        }
    }

    fn of_mut(&mut self, kind: ChangeKind) -> &mut BTreeMap<String, Option<BTreeSet<String>>> {
        if kind == ChangeKind::Flag {
            &mut self.flags
        } else {
            &mut self.segments
        }
    }

    /// Records what item `key` references (replacing what it referenced before).
    fn set(&mut self, kind: ChangeKind, key: &str, refs: Option<BTreeSet<String>>) {
        self.unlink(kind, key);
        if kind == ChangeKind::Segment {
            for r in refs.iter().flatten() {
                let users = self.segment_users.entry(r.clone()).or_default();
                users.insert(key.to_string());
            }
        }
        self.of_mut(kind).insert(key.to_string(), refs);
    }

    fn remove(&mut self, kind: ChangeKind, key: &str) {
        self.unlink(kind, key);
        self.of_mut(kind).remove(key);
    }

    /// Drops segment `key`'s entries from the reverse index.
    fn unlink(&mut self, kind: ChangeKind, key: &str) {
        if kind != ChangeKind::Segment {
            return;
        }
        let Some(Some(old)) = self.segments.get(key) else {
            return;
        };
        for r in old {
            if let Some(users) = self.segment_users.get_mut(r) {
                users.remove(key);
                if users.is_empty() {
                    self.segment_users.remove(r);
                }
            }
        }
    }

    /// The stored `$ref`s of segment `s` (none if absent or unreadable).
    fn segment_refs<'a>(&'a self, s: &str) -> impl Iterator<Item = &'a str> {
        let refs = self.segments.get(s).and_then(Option::as_ref);
        refs.into_iter().flatten().map(String::as_str)
    }

    /// The segments that `$ref` segment `s`.
    fn users_of<'a>(&'a self, s: &str) -> impl Iterator<Item = &'a str> {
        self.segment_users
            .get(s)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

/// The serialized form of [`Namespace`] (same fields, same order), so decoding rebuilds the
/// reference index.
#[derive(Deserialize)]
struct NamespaceWire {
    version: u64,
    description: String,
    last_change: u64,
    flags: BTreeMap<String, Item>,
    segments: BTreeMap<String, Item>,
}

impl From<NamespaceWire> for Namespace {
    fn from(w: NamespaceWire) -> Self {
        let mut space = Namespace {
            version: w.version,
            description: w.description,
            last_change: w.last_change,
            flags: w.flags,
            segments: w.segments,
            refs: RefIndex::default(),
        };
        space.reindex("");
        space
    }
}

impl Namespace {
    /// Rebuilds the reference index from the stored definitions (after loading).
    fn reindex(&mut self, ns: &str) {
        let mut index = RefIndex::default();
        for kind in [ChangeKind::Flag, ChangeKind::Segment] {
            for (key, item) in self.items(kind) {
                let refs = match refs_of(kind, &item.definition) {
                    Ok(refs) => Some(refs),
                    Err(e) => {
                        tracing::error!(
                            ns, kind = kind.as_str(), key = %key, error = %e,
                            "stored definition does not parse (state corrupt); it counts as referencing anything"
                        );
                        None
                    }
                };
                index.set(kind, key, refs);
                index.bytes += item.definition.len();
            }
        }
        self.refs = index;
    }

    /// The segment names a stored flag or segment references (`None`: absent, or its stored
    /// definition does not parse).
    pub fn refs(&self, kind: ChangeKind, key: &str) -> Option<&BTreeSet<String>> {
        self.refs.of(kind).get(key).and_then(Option::as_ref)
    }

    /// The flags for [`ChangeKind::Flag`], the segments otherwise.
    pub fn items(&self, kind: ChangeKind) -> &BTreeMap<String, Item> {
        if kind == ChangeKind::Flag {
            &self.flags
        } else {
            &self.segments
        }
    }

    fn items_mut(&mut self, kind: ChangeKind) -> &mut BTreeMap<String, Item> {
        if kind == ChangeKind::Flag {
            &mut self.flags
        } else {
            &mut self.segments
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChangeKind {
    Namespace,
    Flag,
    Segment,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Namespace => "namespace",
            ChangeKind::Flag => "flag",
            ChangeKind::Segment => "segment",
        }
    }
}

/// One entry of the change history (audit log and watch replay): everything one command changed
/// in one namespace, at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    /// The namespace's previous change, so a reader can see a gap.
    pub prev_revision: u64,
    pub at_ms: u64,
    pub actor: String,
    pub ns: String,
    pub items: Vec<ChangeItem>,
}

/// One item a change touched; `before`/`after` are definitions (`None`: absent), shared with
/// the items they were (a namespace's are its description, text that has no JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeItem {
    pub kind: ChangeKind,
    pub key: String,
    pub before: Option<Definition>,
    pub after: Option<Definition>,
}

/// An SDK key: bound to one namespace; the secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdkKey {
    pub ns: String,
    pub name: String,
    pub created_at_ms: u64,
    pub created_by: String,
}

/// An admin token created through the API (besides the bootstrap tokens of the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    pub name: String,
    pub created_at_ms: u64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IdempotencyRecord {
    seq: u64,
    fingerprint: String,
    result: CommandResult,
}

/// Small fields persisted as one row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    clock_ms: u64,
    idempotency_seq: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NamespaceHeader {
    version: u64,
    description: String,
    last_change: u64,
}

/// The whole replicated state. Also the snapshot payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    meta: Meta,
    namespaces: BTreeMap<String, Namespace>,
    history: VecDeque<Arc<Change>>,
    /// SHA-256 (hex) of the secret → key.
    sdk_keys: BTreeMap<String, SdkKey>,
    admin_tokens: BTreeMap<String, AdminToken>,
    idempotency: BTreeMap<String, IdempotencyRecord>,
    /// Keys in insertion order, for first-in-first-out eviction.
    idempotency_order: VecDeque<String>,
    /// Changes applied since the state machine last took them (to publish to watchers).
    #[serde(skip)]
    pending: Vec<Arc<Change>>,
    /// A/B test records. Encoded after the rest in snapshots and backups
    /// ([`State::to_snapshot`]), so those written before experiments existed still read.
    #[serde(skip)]
    experiments: ExperimentStore,
}

/// A pending write to the state-machine column family: `None` deletes the row.
pub(crate) type RowOp = (Vec<u8>, Option<Vec<u8>>);

const META_KEY: &[u8] = b"m";

fn ns_key(ns: &str) -> Vec<u8> {
    [b"n:", ns.as_bytes()].concat()
}
fn item_key(kind: ChangeKind, ns: &str, key: &str) -> Vec<u8> {
    let tag: &[u8] = if kind == ChangeKind::Flag {
        b"f:"
    } else {
        b"s:"
    };
    [tag, ns.as_bytes(), b"\0", key.as_bytes()].concat()
}
fn history_key(revision: u64) -> Vec<u8> {
    [b"h:".as_slice(), &revision.to_be_bytes()].concat()
}
fn sdk_key_row(hash: &str) -> Vec<u8> {
    [b"k:", hash.as_bytes()].concat()
}
fn admin_token_row(hash: &str) -> Vec<u8> {
    [b"a:", hash.as_bytes()].concat()
}
fn idem_key(scope: &str) -> Vec<u8> {
    [b"i:", scope.as_bytes()].concat()
}

pub(crate) fn encode_row<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain owned data into a Vec cannot fail.
    codec::encode(v).unwrap_or_default()
}

impl State {
    pub fn last_applied(&self) -> Option<LogId> {
        self.meta.last_applied
    }
    pub fn membership(&self) -> &StoredMembership {
        &self.meta.membership
    }
    /// The cluster revision: +1 per applied change, never reused.
    pub fn revision(&self) -> u64 {
        self.meta.revision
    }
    pub fn namespaces(&self) -> &BTreeMap<String, Namespace> {
        &self.namespaces
    }
    pub fn namespace(&self, ns: &str) -> Option<&Namespace> {
        self.namespaces.get(ns)
    }
    /// The retained history, oldest first.
    pub fn history(&self) -> &VecDeque<Arc<Change>> {
        &self.history
    }

    /// The recorded exposures and conversions of experiment flags.
    pub fn experiments(&self) -> &ExperimentStore {
        &self.experiments
    }

    /// The state as a snapshot or backup carries it: the state, then the experiment records.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, codec::CodecError> {
        let mut bytes = codec::encode(self)?;
        postcard::to_io(&self.experiments, &mut bytes).map_err(codec::CodecError::Postcard)?;
        Ok(bytes)
    }

    /// Reads [`State::to_snapshot`]'s bytes, or a state encoded before experiment records
    /// existed (nothing after the state).
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, codec::CodecError> {
        let (mut state, rest): (State, &[u8]) = codec::decode_prefix(bytes)?;
        if !rest.is_empty() {
            state.experiments = postcard::from_bytes(rest)?;
            state.experiments.finish_load();
        }
        Ok(state)
    }

    /// SDK keys by the SHA-256 (hex) of their secret.
    pub fn sdk_keys(&self) -> &BTreeMap<String, SdkKey> {
        &self.sdk_keys
    }

    /// API-created admin tokens by the SHA-256 (hex) of their secret.
    pub fn admin_tokens(&self) -> &BTreeMap<String, AdminToken> {
        &self.admin_tokens
    }

    /// The outcome recorded for idempotency scope `scope`, with the fingerprint of the request
    /// that produced it, while the scope is remembered. Read-only: a node answering a request
    /// whose earlier try may already have been applied (the `PATCH` retry loop) looks here
    /// before computing anything new; `apply` still decides every replay itself.
    pub fn idempotency_outcome(&self, scope: &str) -> Option<(&str, &CommandResult)> {
        self.idempotency
            .get(scope)
            .map(|rec| (rec.fingerprint.as_str(), &rec.result))
    }

    /// Takes the changes applied since the last call, in revision order.
    pub(crate) fn take_pending(&mut self) -> Vec<Arc<Change>> {
        std::mem::take(&mut self.pending)
    }

    pub(crate) fn set_applied(&mut self, log_id: LogId, rows: &mut Vec<RowOp>) {
        self.meta.last_applied = Some(log_id);
        rows.push((META_KEY.to_vec(), Some(encode_row(&self.meta))));
    }

    pub(crate) fn set_membership(&mut self, m: StoredMembership) {
        self.meta.membership = m;
    }

    /// Drops what ties the state to its cluster (membership, applied log position), keeping
    /// every namespace, key, token, the history and the revision: a restored backup's state,
    /// for a new cluster's log to apply on top of.
    pub(crate) fn forget_cluster(&mut self) {
        self.meta.last_applied = None;
        self.meta.membership = StoredMembership::default();
    }

    /// Applies one log entry's commands; returns one result per command and appends the row
    /// operations that persist the change (the caller adds `last_applied`).
    pub(crate) fn apply_request(
        &mut self,
        req: &Request,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> Vec<CommandResult> {
        self.meta.clock_ms = self.meta.clock_ms.max(req.proposed_at_ms);
        req.commands
            .iter()
            .map(|env| self.apply_envelope(env, limits, rows))
            .collect()
    }

    fn apply_envelope(
        &mut self,
        env: &Envelope,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> CommandResult {
        if let Some(idem) = &env.idempotency {
            if let Some(rec) = self.idempotency.get(&idem.scope) {
                if rec.fingerprint != idem.fingerprint {
                    return Err(ApplyError::IdempotencyKeyReused);
                }
                return rec.result.clone().map(|a| Applied {
                    replayed: true,
                    ..a
                });
            }
        }
        let result = self.apply_command(&env.command, &env.actor, limits, rows);
        if let Some(idem) = &env.idempotency {
            self.meta.idempotency_seq += 1;
            let rec = IdempotencyRecord {
                seq: self.meta.idempotency_seq,
                fingerprint: idem.fingerprint.clone(),
                result: result.clone(),
            };
            rows.push((idem_key(&idem.scope), Some(encode_row(&rec))));
            self.idempotency.insert(idem.scope.clone(), rec);
            self.idempotency_order.push_back(idem.scope.clone());
            while self.idempotency_order.len() > limits.idempotency_keys {
                if let Some(old) = self.idempotency_order.pop_front() {
                    self.idempotency.remove(&old);
                    rows.push((idem_key(&old), None));
                }
            }
        }
        result
    }

    fn apply_command(
        &mut self,
        cmd: &Command,
        actor: &str,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> CommandResult {
        match cmd {
            Command::PutNamespace {
                ns,
                description,
                condition,
            } => {
                let current = self.namespaces.get(ns).map(|n| n.version);
                check(*condition, current)?;
                let revision = self.meta.revision + 1;
                let entry = self.namespaces.entry(ns.clone()).or_default();
                let before = current.map(|_| Definition::unparsed(entry.description.as_str()));
                entry.version = revision;
                entry.description = description.clone();
                let item = ChangeItem {
                    kind: ChangeKind::Namespace,
                    key: ns.clone(),
                    before,
                    after: Some(Definition::unparsed(description.as_str())),
                };
                self.finish_change(ns, actor, vec![item], limits, rows)
            }
            Command::DeleteNamespace { ns, condition } => {
                let current = self.namespaces.get(ns).map(|n| n.version);
                if current.is_none() && *condition == Condition::None {
                    return Err(ApplyError::NamespaceNotFound { ns: ns.clone() });
                }
                check(*condition, current)?;
                let Some(removed) = self.namespaces.remove(ns) else {
                    return Err(ApplyError::NamespaceNotFound { ns: ns.clone() });
                };
                let mut items = Vec::new();
                for (kind, map) in [
                    (ChangeKind::Flag, &removed.flags),
                    (ChangeKind::Segment, &removed.segments),
                ] {
                    for (key, item) in map {
                        rows.push((item_key(kind, ns, key), None));
                        items.push(ChangeItem {
                            kind,
                            key: key.clone(),
                            before: Some(item.definition.clone()),
                            after: None,
                        });
                    }
                }
                items.push(ChangeItem {
                    kind: ChangeKind::Namespace,
                    key: ns.clone(),
                    before: Some(Definition::unparsed(removed.description)),
                    after: None,
                });
                rows.push((ns_key(ns), None));
                let bound: Vec<String> = self
                    .sdk_keys
                    .iter()
                    .filter(|(_, k)| &k.ns == ns)
                    .map(|(h, _)| h.clone())
                    .collect();
                for hash in bound {
                    self.sdk_keys.remove(&hash);
                    rows.push((sdk_key_row(&hash), None));
                }
                let revision = self.meta.revision + 1;
                self.meta.revision = revision;
                let change = Change {
                    revision,
                    prev_revision: removed.last_change,
                    at_ms: self.meta.clock_ms,
                    actor: actor.to_string(),
                    ns: ns.clone(),
                    items,
                };
                self.record(change, limits, rows);
                self.prune_experiments(ns, rows);
                Ok(Applied {
                    revision,
                    replayed: false,
                })
            }
            Command::PutFlag {
                ns,
                key,
                definition,
                condition,
            } => self.put_item(
                ChangeKind::Flag,
                ns,
                key,
                definition,
                *condition,
                actor,
                limits,
                rows,
            ),
            Command::PutSegment {
                ns,
                key,
                definition,
                condition,
            } => self.put_item(
                ChangeKind::Segment,
                ns,
                key,
                definition,
                *condition,
                actor,
                limits,
                rows,
            ),
            Command::DeleteFlag { ns, key, condition } => {
                let done =
                    self.delete_item(ChangeKind::Flag, ns, key, *condition, actor, limits, rows)?;
                self.prune_experiments(ns, rows);
                Ok(done)
            }
            Command::DeleteSegment { ns, key, condition } => self.delete_item(
                ChangeKind::Segment,
                ns,
                key,
                *condition,
                actor,
                limits,
                rows,
            ),
            Command::ImportFlagd {
                ns,
                flags,
                segments,
            } => {
                let done = self.import(ns, flags, segments, actor, limits, rows)?;
                self.prune_experiments(ns, rows);
                Ok(done)
            }
            Command::RecordEvents { ns, batch } => {
                let space = self
                    .namespaces
                    .get(ns)
                    .ok_or_else(|| ApplyError::NamespaceNotFound { ns: ns.clone() })?;
                let now = self.meta.clock_ms;
                let done = self.experiments.apply(
                    ns,
                    batch,
                    |flag| space.flags.contains_key(flag),
                    now,
                    limits.experiments,
                    rows,
                );
                // Events change no flag: no revision, no history, nothing for watchers.
                Ok(Applied {
                    revision: self.meta.revision,
                    replayed: done.parts == 0 && done.duplicates > 0,
                })
            }
            Command::CreateSdkKey { ns, name, hash } => {
                if !self.namespaces.contains_key(ns) {
                    return Err(ApplyError::NamespaceNotFound { ns: ns.clone() });
                }
                if self
                    .sdk_keys
                    .values()
                    .any(|k| &k.ns == ns && &k.name == name)
                    || self.sdk_keys.contains_key(hash)
                {
                    return Err(ApplyError::AlreadyExists {
                        what: format!("SDK key {name:?} in namespace {ns:?}"),
                    });
                }
                let key = SdkKey {
                    ns: ns.clone(),
                    name: name.clone(),
                    created_at_ms: self.meta.clock_ms,
                    created_by: actor.to_string(),
                };
                rows.push((sdk_key_row(hash), Some(encode_row(&key))));
                self.sdk_keys.insert(hash.clone(), key);
                Ok(self.bump())
            }
            Command::RevokeSdkKey { ns, name } => {
                let hash = self
                    .sdk_keys
                    .iter()
                    .find(|(_, k)| &k.ns == ns && &k.name == name)
                    .map(|(h, _)| h.clone());
                let Some(hash) = hash else {
                    return Err(ApplyError::NotFound {
                        ns: ns.clone(),
                        kind: "SDK key".into(),
                        key: name.clone(),
                    });
                };
                self.sdk_keys.remove(&hash);
                rows.push((sdk_key_row(&hash), None));
                Ok(self.bump())
            }
            Command::CreateAdminToken { name, hash } => {
                if self.admin_tokens.values().any(|t| &t.name == name)
                    || self.admin_tokens.contains_key(hash)
                {
                    return Err(ApplyError::AlreadyExists {
                        what: format!("admin token {name:?}"),
                    });
                }
                let token = AdminToken {
                    name: name.clone(),
                    created_at_ms: self.meta.clock_ms,
                    created_by: actor.to_string(),
                };
                rows.push((admin_token_row(hash), Some(encode_row(&token))));
                self.admin_tokens.insert(hash.clone(), token);
                Ok(self.bump())
            }
            Command::RevokeAdminToken { name } => {
                let hash = self
                    .admin_tokens
                    .iter()
                    .find(|(_, t)| &t.name == name)
                    .map(|(h, _)| h.clone());
                let Some(hash) = hash else {
                    return Err(ApplyError::NotFound {
                        ns: String::new(),
                        kind: "admin token".into(),
                        key: name.clone(),
                    });
                };
                self.admin_tokens.remove(&hash);
                rows.push((admin_token_row(&hash), None));
                Ok(self.bump())
            }
        }
    }

    /// Drops the experiment records of flags `ns` no longer has.
    fn prune_experiments(&mut self, ns: &str, rows: &mut Vec<RowOp>) {
        let space = self.namespaces.get(ns);
        self.experiments.prune(
            ns,
            |flag| space.is_some_and(|s| s.flags.contains_key(flag)),
            rows,
        );
    }

    fn existing(&self, ns: &str) -> Result<&Namespace, ApplyError> {
        self.namespaces
            .get(ns)
            .ok_or_else(|| ApplyError::NamespaceNotFound { ns: ns.to_string() })
    }

    fn existing_mut(&mut self, ns: &str) -> Result<&mut Namespace, ApplyError> {
        self.namespaces
            .get_mut(ns)
            .ok_or_else(|| ApplyError::NamespaceNotFound { ns: ns.to_string() })
    }

    /// A mutation outside any namespace's flags (keys, tokens): one revision, no history entry.
    fn bump(&mut self) -> Applied {
        self.meta.revision += 1;
        Applied {
            revision: self.meta.revision,
            replayed: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put_item(
        &mut self,
        kind: ChangeKind,
        ns: &str,
        key: &str,
        definition: &str,
        condition: Condition,
        actor: &str,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> CommandResult {
        let space = self.existing(ns)?;
        let items = space.items(kind);
        let existing = items.get(key);
        check(condition, existing.map(|i| i.version))?;
        check_size(kind, "definition", definition, limits)?;
        if existing.is_none() {
            check_count(kind, items.len() + 1, limits, kind_section(kind))?;
        }
        let old_len = existing.map_or(0, |i| i.definition.len());
        let bytes = space.refs.bytes - old_len + definition.len();
        check_namespace_bytes(kind_section(kind), bytes, limits)?;
        let definition = Definition::parse(definition);
        let refs = refs_of(kind, &definition).map_err(|message| ApplyError::InvalidDefinition {
            path: "definition".into(),
            message: message.to_string(),
        })?;
        check_references(ns, space, kind, key, &refs, limits)?;

        let item = Item {
            version: self.meta.revision + 1,
            definition: definition.clone(),
            updated_at_ms: self.meta.clock_ms,
            updated_by: actor.to_string(),
        };
        rows.push((item_key(kind, ns, key), Some(encode_row(&item))));
        let space = self.existing_mut(ns)?;
        space.refs.set(kind, key, Some(refs));
        space.refs.bytes = bytes;
        let items = space.items_mut(kind);
        let before = items
            .insert(key.to_string(), item)
            .map(|old| old.definition);
        let change = ChangeItem {
            kind,
            key: key.to_string(),
            before,
            after: Some(definition),
        };
        self.finish_change(ns, actor, vec![change], limits, rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn delete_item(
        &mut self,
        kind: ChangeKind,
        ns: &str,
        key: &str,
        condition: Condition,
        actor: &str,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> CommandResult {
        let space = self.existing(ns)?;
        let items = space.items(kind);
        let current = items.get(key).map(|i| i.version);
        if current.is_none() && condition == Condition::None {
            return Err(ApplyError::NotFound {
                ns: ns.to_string(),
                kind: kind.as_str().to_string(),
                key: key.to_string(),
            });
        }
        check(condition, current)?;
        if kind == ChangeKind::Segment {
            let users = segment_users(space, key);
            if !users.is_empty() {
                return Err(ApplyError::SegmentInUse {
                    segment: key.to_string(),
                    users,
                });
            }
        }
        let space = self.existing_mut(ns)?;
        space.refs.remove(kind, key);
        let items = space.items_mut(kind);
        let before = items.remove(key).map(|old| old.definition);
        space.refs.bytes -= before.as_ref().map_or(0, Definition::len);
        rows.push((item_key(kind, ns, key), None));
        let change = ChangeItem {
            kind,
            key: key.to_string(),
            before,
            after: None,
        };
        self.finish_change(ns, actor, vec![change], limits, rows)
    }

    /// Replaces a namespace's flags and segments in one revision.
    fn import(
        &mut self,
        ns: &str,
        flags: &[(String, String)],
        segments: &[(String, String)],
        actor: &str,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> CommandResult {
        let (index, [flags, segments]) = import_refs(ns, flags, segments, limits)?;
        let revision = self.meta.revision + 1;
        let (clock, who) = (self.meta.clock_ms, actor.to_string());
        let space = self.namespaces.entry(ns.to_string()).or_default();
        if space.version == 0 {
            space.version = revision;
        }
        space.refs = index;
        let mut changes = Vec::new();
        for (kind, wanted) in [(ChangeKind::Flag, flags), (ChangeKind::Segment, segments)] {
            let items = space.items_mut(kind);
            let gone: Vec<String> = items
                .keys()
                .filter(|k| !wanted.contains_key(k.as_str()))
                .cloned()
                .collect();
            for key in gone {
                let before = items.remove(&key).map(|i| i.definition);
                rows.push((item_key(kind, ns, &key), None));
                changes.push(ChangeItem {
                    kind,
                    key,
                    before,
                    after: None,
                });
            }
            for (key, definition) in wanted {
                let before = items.get(&key).map(|i| i.definition.clone());
                if before.as_ref() == Some(&definition) {
                    continue;
                }
                let item = Item {
                    version: revision,
                    definition: definition.clone(),
                    updated_at_ms: clock,
                    updated_by: who.clone(),
                };
                rows.push((item_key(kind, ns, &key), Some(encode_row(&item))));
                items.insert(key.clone(), item);
                changes.push(ChangeItem {
                    kind,
                    key,
                    before,
                    after: Some(definition),
                });
            }
        }
        self.finish_change(ns, actor, changes, limits, rows)
    }

    /// Bumps the revision, stamps the namespace and records the change.
    fn finish_change(
        &mut self,
        ns: &str,
        actor: &str,
        items: Vec<ChangeItem>,
        limits: StateLimits,
        rows: &mut Vec<RowOp>,
    ) -> CommandResult {
        let revision = self.meta.revision + 1;
        self.meta.revision = revision;
        let space = self.existing_mut(ns)?;
        let prev_revision = space.last_change;
        space.last_change = revision;
        let header = NamespaceHeader {
            version: space.version,
            description: space.description.clone(),
            last_change: revision,
        };
        rows.push((ns_key(ns), Some(encode_row(&header))));
        let change = Change {
            revision,
            prev_revision,
            at_ms: self.meta.clock_ms,
            actor: actor.to_string(),
            ns: ns.to_string(),
            items,
        };
        self.record(change, limits, rows);
        Ok(Applied {
            revision,
            replayed: false,
        })
    }

    fn record(&mut self, change: Change, limits: StateLimits, rows: &mut Vec<RowOp>) {
        rows.push((history_key(change.revision), Some(encode_row(&change))));
        let change = Arc::new(change);
        self.pending.push(change.clone());
        self.history.push_back(change);
        while self.history.len() > limits.history {
            if let Some(old) = self.history.pop_front() {
                rows.push((history_key(old.revision), None));
            }
        }
    }

    /// Every row that persists this state (used when a snapshot is installed).
    pub(crate) fn all_rows(&self) -> Vec<RowOp> {
        let mut rows = vec![(META_KEY.to_vec(), Some(encode_row(&self.meta)))];
        for (name, space) in &self.namespaces {
            let header = NamespaceHeader {
                version: space.version,
                description: space.description.clone(),
                last_change: space.last_change,
            };
            rows.push((ns_key(name), Some(encode_row(&header))));
            for (key, item) in &space.flags {
                rows.push((
                    item_key(ChangeKind::Flag, name, key),
                    Some(encode_row(item)),
                ));
            }
            for (key, item) in &space.segments {
                rows.push((
                    item_key(ChangeKind::Segment, name, key),
                    Some(encode_row(item)),
                ));
            }
        }
        for change in &self.history {
            rows.push((history_key(change.revision), Some(encode_row(&**change))));
        }
        for (hash, key) in &self.sdk_keys {
            rows.push((sdk_key_row(hash), Some(encode_row(key))));
        }
        for (hash, token) in &self.admin_tokens {
            rows.push((admin_token_row(hash), Some(encode_row(token))));
        }
        for (scope, rec) in &self.idempotency {
            rows.push((idem_key(scope), Some(encode_row(rec))));
        }
        self.experiments.all_rows(&mut rows);
        rows
    }

    /// Rebuilds the state from the rows written by [`State::apply_request`] and
    /// [`State::all_rows`], in key order.
    pub(crate) fn from_rows<'a>(
        rows: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<State, codec::CodecError> {
        let mut state = State::default();
        let mut idem: Vec<(u64, String)> = Vec::new();
        for (key, value) in rows {
            let (tag, rest) = key.split_at(key.len().min(2));
            match tag {
                b"n:" => {
                    let h: NamespaceHeader = codec::decode(value)?;
                    let space = state
                        .namespaces
                        .entry(String::from_utf8_lossy(rest).into_owned())
                        .or_default();
                    space.version = h.version;
                    space.description = h.description;
                    space.last_change = h.last_change;
                }
                b"f:" | b"s:" => {
                    let item: Item = codec::decode(value)?;
                    let mut parts = rest.splitn(2, |b| *b == 0);
                    let ns = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let name =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let space = state.namespaces.entry(ns).or_default();
                    if tag == b"f:" {
                        space.flags.insert(name, item);
                    } else {
                        space.segments.insert(name, item);
                    }
                }
                b"h:" => state.history.push_back(Arc::new(codec::decode(value)?)),
                b"k:" => {
                    state.sdk_keys.insert(
                        String::from_utf8_lossy(rest).into_owned(),
                        codec::decode(value)?,
                    );
                }
                b"a:" => {
                    state.admin_tokens.insert(
                        String::from_utf8_lossy(rest).into_owned(),
                        codec::decode(value)?,
                    );
                }
                b"i:" => {
                    let rec: IdempotencyRecord = codec::decode(value)?;
                    let scope = String::from_utf8_lossy(rest).into_owned();
                    idem.push((rec.seq, scope.clone()));
                    state.idempotency.insert(scope, rec);
                }
                RECORD_TAG | BATCH_TAG | EVALUATED_TAG => {
                    state.experiments.load_row(tag, rest, value)?
                }
                _ if key == META_KEY => state.meta = codec::decode(value)?,
                _ => {}
            }
        }
        state.experiments.finish_load();
        idem.sort();
        state.idempotency_order = idem.into_iter().map(|(_, s)| s).collect();
        for (name, space) in &mut state.namespaces {
            space.reindex(name);
        }
        Ok(state)
    }
}

/// Decides a precondition against the item's current version.
fn check(condition: Condition, current: Option<u64>) -> Result<(), ApplyError> {
    // Deliberate break, test builds only (see fault_injection.rs).
    if crate::fault_injection::cas_ignores_condition()
        && matches!(condition, Condition::IfMatch(_))
        && current.is_some()
    {
        return Ok(());
    }
    match (condition, current) {
        (Condition::None, _) => Ok(()),
        (Condition::IfMatch(want), Some(have)) if want == have => Ok(()),
        (Condition::CreateOnly, None) => Ok(()),
        _ => Err(ApplyError::PreconditionFailed { current }),
    }
}

/// The segment names a flag or segment definition `$ref`s; the parser's message if it is not
/// JSON.
fn refs_of(kind: ChangeKind, definition: &Definition) -> Result<BTreeSet<String>, &str> {
    let value = definition.json()?;
    Ok(if kind == ChangeKind::Flag {
        flagstaff_flags::flag_refs(value)
    } else {
        flagstaff_flags::rule_refs(value)
    })
}

/// Where a kind's items live in API paths of single writes.
fn kind_section(kind: ChangeKind) -> &'static str {
    if kind == ChangeKind::Flag {
        "flags"
    } else {
        "segments"
    }
}

fn check_size(
    kind: ChangeKind,
    path: &str,
    definition: &str,
    limits: StateLimits,
) -> Result<(), ApplyError> {
    if definition.len() > limits.max_definition_bytes {
        return Err(ApplyError::LimitExceeded {
            path: path.to_string(),
            what: format!("bytes in a {} definition", kind.as_str()),
            limit: limits.max_definition_bytes,
            actual: definition.len(),
        });
    }
    Ok(())
}

/// `bytes`: the namespace's definition bytes after the write.
fn check_namespace_bytes(path: &str, bytes: usize, limits: StateLimits) -> Result<(), ApplyError> {
    if bytes > limits.max_namespace_bytes {
        return Err(ApplyError::LimitExceeded {
            path: path.to_string(),
            what: "bytes of definitions in a namespace".into(),
            limit: limits.max_namespace_bytes,
            actual: bytes,
        });
    }
    Ok(())
}

/// `count`: how many items of `kind` the namespace would hold.
fn check_count(
    kind: ChangeKind,
    count: usize,
    limits: StateLimits,
    path: &str,
) -> Result<(), ApplyError> {
    let (limit, what) = if kind == ChangeKind::Flag {
        (limits.max_flags, "flags in a namespace")
    } else {
        (limits.max_segments, "segments in a namespace")
    };
    if count > limit {
        return Err(ApplyError::LimitExceeded {
            path: path.to_string(),
            what: what.to_string(),
            limit,
            actual: count,
        });
    }
    Ok(())
}

/// `$ref` targets must exist; a segment must not close a cycle nor make a chain too long.
/// Uses the stored reference graph with the new segment's references in place: one O(V+E)
/// pass, no definition parsed.
fn check_references(
    ns: &str,
    space: &Namespace,
    kind: ChangeKind,
    key: &str,
    refs: &BTreeSet<String>,
    limits: StateLimits,
) -> Result<(), ApplyError> {
    let path = if kind == ChangeKind::Flag {
        "targeting"
    } else {
        "rule"
    };
    for name in refs {
        let exists =
            space.segments.contains_key(name) || (kind == ChangeKind::Segment && name == key);
        if !exists {
            return Err(ApplyError::UnknownSegment {
                ns: ns.to_string(),
                path: path.to_string(),
                segment: name.clone(),
            });
        }
    }
    if kind == ChangeKind::Segment && !refs.is_empty() {
        check_segment_write(&space.refs, key, refs, limits, path)?;
    }
    Ok(())
}

/// After segment `key` gets `refs`, in a graph that was valid before: only cycles and chains
/// through `key` can be new, so this walks the segments below `refs` and above `key` (each once,
/// iteratively), not the whole namespace. A chain through `key` is the longest one of users
/// ending at it plus the longest one starting at one of `refs`.
fn check_segment_write(
    index: &RefIndex,
    key: &str,
    refs: &BTreeSet<String>,
    limits: StateLimits,
    path: &str,
) -> Result<(), ApplyError> {
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let below = longest_chain(&refs, Some(key), |s| index.segment_refs(s))?;
    let above = longest_chain(&[key], None, |s| index.users_of(s).filter(move |u| *u != s))?;
    let chain = above + below;
    let max = limits.ref_chain();
    if chain > max {
        return Err(ApplyError::SegmentChainTooLong {
            path: path.to_string(),
            segment: key.to_string(),
            chain,
            max,
        });
    }
    Ok(())
}

/// The most segments on one path from any of `starts` along `next` (0 without `starts`).
/// Reaching `forbidden`, or any segment already on the path, is a cycle.
fn longest_chain<'a, I: Iterator<Item = &'a str>>(
    starts: &[&'a str],
    forbidden: Option<&str>,
    next: impl Fn(&'a str) -> I,
) -> Result<usize, ApplyError> {
    let mut done: HashMap<&str, usize> = HashMap::new();
    let mut on_path: Vec<&str> = Vec::new();
    let mut longest = 0;
    for &start in starts {
        // (segment, whether its successors were pushed already)
        let mut stack = vec![(start, false)];
        while let Some((s, expanded)) = stack.pop() {
            if expanded {
                let depth = 1 + next(s)
                    .filter_map(|c| done.get(c))
                    .max()
                    .copied()
                    .unwrap_or(0);
                done.insert(s, depth);
                on_path.pop();
                continue;
            }
            if done.contains_key(s) {
                continue;
            }
            if Some(s) == forbidden || on_path.contains(&s) {
                let mut cycle: Vec<String> = forbidden.into_iter().map(str::to_string).collect();
                cycle.extend(on_path.iter().map(|p| p.to_string()));
                cycle.push(s.to_string());
                return Err(ApplyError::SegmentCycle { cycle });
            }
            on_path.push(s);
            stack.push((s, true));
            stack.extend(
                next(s)
                    .filter(|c| !done.contains_key(c))
                    .map(|c| (c, false)),
            );
        }
        longest = longest.max(done.get(start).copied().unwrap_or(0));
    }
    Ok(longest)
}

/// Checks an import (sizes, counts, parse, references, the segment graph) and returns the
/// namespace's new reference index.
fn import_refs(
    ns: &str,
    flags: &[(String, String)],
    segments: &[(String, String)],
    limits: StateLimits,
) -> Result<(RefIndex, [BTreeMap<String, Definition>; 2]), ApplyError> {
    let mut index = RefIndex::default();
    let mut parsed: [BTreeMap<String, Definition>; 2] = Default::default();
    for ((kind, section, items), parsed) in [
        (ChangeKind::Flag, "flags", flags),
        (ChangeKind::Segment, "$evaluators", segments),
    ]
    .into_iter()
    .zip(&mut parsed)
    {
        for (key, definition) in items {
            let path = format!("{section}.{key}");
            check_size(kind, &path, definition, limits)?;
            let definition = Definition::parse(definition.as_str());
            let refs =
                refs_of(kind, &definition).map_err(|message| ApplyError::InvalidDefinition {
                    path: path.clone(),
                    message: message.to_string(),
                })?;
            index.set(kind, key, Some(refs));
            // Duplicate keys keep the last definition, as the import itself does.
            parsed.insert(key.clone(), definition);
        }
        check_count(kind, index.of_mut(kind).len(), limits, section)?;
    }
    index.bytes = parsed
        .iter()
        .flat_map(|m| m.values())
        .map(Definition::len)
        .sum();
    check_namespace_bytes("flags", index.bytes, limits)?;
    for (key, refs) in &index.flags {
        if let Some(missing) = refs
            .iter()
            .flatten()
            .find(|r| !index.segments.contains_key(*r))
        {
            return Err(ApplyError::UnknownSegment {
                ns: ns.to_string(),
                path: format!("flags.{key}.targeting"),
                segment: missing.clone(),
            });
        }
    }
    let graph = index.segments.iter().map(|(k, r)| (k.as_str(), r.as_ref()));
    check_segment_graph(ns, graph, limits, |segment| {
        format!("$evaluators.{segment}")
    })?;
    Ok((index, parsed))
}

/// Every `$ref` of the graph names one of its segments, no cycle, no chain longer than the
/// limit: one O(V+E) pass, whatever the segments are named. A segment whose stored definition
/// does not parse (`None`) counts as referencing nothing.
fn check_segment_graph<'a>(
    ns: &str,
    graph: impl Iterator<Item = (&'a str, Option<&'a BTreeSet<String>>)>,
    limits: StateLimits,
    path: impl Fn(&str) -> String,
) -> Result<(), ApplyError> {
    let graph = graph.map(|(k, r)| (k, r.into_iter().flatten().map(String::as_str)));
    match flagstaff_flags::check_segment_graph(graph, limits.ref_chain()) {
        Ok(()) => Ok(()),
        Err(flagstaff_flags::RefFault::Missing { segment, missing }) => {
            Err(ApplyError::UnknownSegment {
                ns: ns.to_string(),
                path: path(&segment),
                segment: missing,
            })
        }
        Err(flagstaff_flags::RefFault::Cycle(cycle)) => Err(ApplyError::SegmentCycle { cycle }),
        Err(flagstaff_flags::RefFault::TooDeep {
            segment,
            chain,
            max,
        }) => Err(ApplyError::SegmentChainTooLong {
            path: path(&segment),
            segment,
            chain,
            max,
        }),
    }
}

/// Flags and segments whose definitions reference `segment`, from the stored references (an
/// item whose stored definition does not parse counts as a user: deleting under it is refused).
fn segment_users(space: &Namespace, segment: &str) -> Vec<String> {
    let uses = |refs: &Option<BTreeSet<String>>| match refs {
        Some(refs) => refs.contains(segment),
        None => true,
    };
    let label = |what: &str, key: &str, refs: &Option<BTreeSet<String>>| match refs {
        Some(_) => format!("{what} {key}"),
        None => format!("{what} {key} (stored definition unreadable)"),
    };
    let flags = space
        .refs
        .flags
        .iter()
        .filter(|(_, r)| uses(r))
        .map(|(k, r)| label("flag", k, r));
    let segments = space
        .refs
        .segments
        .iter()
        .filter(|(k, r)| k.as_str() != segment && uses(r))
        .map(|(k, r)| label("segment", k, r));
    flags.chain(segments).collect()
}
