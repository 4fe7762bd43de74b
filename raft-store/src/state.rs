//! The replicated state and the deterministic rules that change it.
//!
//! [`State::apply_request`] is the whole business logic of the log: it is a pure function of
//! the state and the entry (no clock, no randomness, only ordered maps), so every node that
//! applies the same log reaches the same state. Every change it makes is also recorded as a row
//! operation, which the state machine writes to RocksDB in the same batch as `last_applied`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{Applied, ApplyError, Command, CommandResult, Condition, Envelope, Request};
use crate::{LogId, StoredMembership};

/// Retention bounds. They must be the same on every node, since eviction is part of `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// How many changes the history keeps (oldest evicted first).
    pub history: usize,
    /// How many idempotency keys are remembered (oldest evicted first).
    pub idempotency_keys: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            history: 100_000,
            idempotency_keys: 100_000,
        }
    }
}

/// A flag or segment as stored: its JSON definition and who changed it last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Revision of the item's last change.
    pub version: u64,
    /// The definition as JSON text (postcard cannot carry `serde_json::Value`).
    pub definition: String,
    pub updated_at_ms: u64,
    pub updated_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub version: u64,
    pub description: String,
    /// Revision of the latest change to anything in this namespace.
    pub last_change: u64,
    pub flags: BTreeMap<String, Item>,
    pub segments: BTreeMap<String, Item>,
}

impl Namespace {
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

/// One item a change touched; `before`/`after` are definitions (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeItem {
    pub kind: ChangeKind,
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
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

fn encode_row<T: Serialize>(v: &T) -> Vec<u8> {
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

    /// SDK keys by the SHA-256 (hex) of their secret.
    pub fn sdk_keys(&self) -> &BTreeMap<String, SdkKey> {
        &self.sdk_keys
    }

    /// API-created admin tokens by the SHA-256 (hex) of their secret.
    pub fn admin_tokens(&self) -> &BTreeMap<String, AdminToken> {
        &self.admin_tokens
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
                let before = current.map(|_| entry.description.clone());
                entry.version = revision;
                entry.description = description.clone();
                let item = ChangeItem {
                    kind: ChangeKind::Namespace,
                    key: ns.clone(),
                    before,
                    after: Some(description.clone()),
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
                    before: Some(removed.description),
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
                self.delete_item(ChangeKind::Flag, ns, key, *condition, actor, limits, rows)
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
            } => self.import(ns, flags, segments, actor, limits, rows),
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
        check(condition, items.get(key).map(|i| i.version))?;
        check_references(ns, space, kind, key, definition)?;

        let item = Item {
            version: self.meta.revision + 1,
            definition: definition.to_string(),
            updated_at_ms: self.meta.clock_ms,
            updated_by: actor.to_string(),
        };
        rows.push((item_key(kind, ns, key), Some(encode_row(&item))));
        let space = self.existing_mut(ns)?;
        let items = space.items_mut(kind);
        let before = items
            .insert(key.to_string(), item)
            .map(|old| old.definition);
        let change = ChangeItem {
            kind,
            key: key.to_string(),
            before,
            after: Some(definition.to_string()),
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
        let items = space.items_mut(kind);
        let before = items.remove(key).map(|old| old.definition);
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
        let rules: BTreeMap<String, serde_json::Value> = segments
            .iter()
            .map(|(k, d)| (k.clone(), parse(d)))
            .collect();
        for (key, definition) in flags {
            if let Some(missing) = references(ChangeKind::Flag, definition)
                .into_iter()
                .find(|r| !rules.contains_key(r))
            {
                return Err(ApplyError::UnknownSegment {
                    ns: ns.to_string(),
                    path: format!("flags.{key}.targeting"),
                    segment: missing,
                });
            }
        }
        check_segment_graph(ns, &rules, |segment| format!("$evaluators.{segment}"))?;
        let revision = self.meta.revision + 1;
        let (clock, who) = (self.meta.clock_ms, actor.to_string());
        let space = self.namespaces.entry(ns.to_string()).or_default();
        if space.version == 0 {
            space.version = revision;
        }
        let mut changes = Vec::new();
        for (kind, wanted) in [(ChangeKind::Flag, flags), (ChangeKind::Segment, segments)] {
            let items = space.items_mut(kind);
            let wanted: BTreeMap<&str, &str> = wanted
                .iter()
                .map(|(k, d)| (k.as_str(), d.as_str()))
                .collect();
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
                let before = items.get(key).map(|i| i.definition.clone());
                if before.as_deref() == Some(definition) {
                    continue;
                }
                let item = Item {
                    version: revision,
                    definition: definition.to_string(),
                    updated_at_ms: clock,
                    updated_by: who.clone(),
                };
                rows.push((item_key(kind, ns, key), Some(encode_row(&item))));
                items.insert(key.to_string(), item);
                changes.push(ChangeItem {
                    kind,
                    key: key.to_string(),
                    before,
                    after: Some(definition.to_string()),
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
                _ if key == META_KEY => state.meta = codec::decode(value)?,
                _ => {}
            }
        }
        idem.sort();
        state.idempotency_order = idem.into_iter().map(|(_, s)| s).collect();
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

fn parse(definition: &str) -> serde_json::Value {
    // The node validated the text before proposal; if it still does not parse, treat it as a
    // rule with no references (deterministic on every node).
    serde_json::from_str(definition).unwrap_or(serde_json::Value::Null)
}

fn references(kind: ChangeKind, definition: &str) -> BTreeSet<String> {
    let value = parse(definition);
    if kind == ChangeKind::Flag {
        flagstaff_flags::flag_refs(&value)
    } else {
        flagstaff_flags::rule_refs(&value)
    }
}

/// `$ref` targets must exist, and a segment must not close a cycle.
fn check_references(
    ns: &str,
    space: &Namespace,
    kind: ChangeKind,
    key: &str,
    definition: &str,
) -> Result<(), ApplyError> {
    let refs = references(kind, definition);
    let path = if kind == ChangeKind::Flag {
        "targeting"
    } else {
        "rule"
    };
    for name in &refs {
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
        let mut rules: BTreeMap<String, serde_json::Value> = space
            .segments
            .iter()
            .map(|(k, item)| (k.clone(), parse(&item.definition)))
            .collect();
        rules.insert(key.to_string(), parse(definition));
        check_segment_graph(ns, &rules, |_| path.to_string())?;
    }
    Ok(())
}

/// Every `$ref` among `rules` names one of them, no cycle, no chain longer than
/// `MAX_REF_CHAIN`: one O(V+E) pass, whatever the segments are named.
fn check_segment_graph(
    ns: &str,
    rules: &BTreeMap<String, serde_json::Value>,
    path: impl Fn(&str) -> String,
) -> Result<(), ApplyError> {
    let refs: Vec<(&str, BTreeSet<String>)> = rules
        .iter()
        .map(|(k, rule)| (k.as_str(), flagstaff_flags::rule_refs(rule)))
        .collect();
    let graph = refs.iter().map(|(k, r)| (*k, r.iter().map(String::as_str)));
    match flagstaff_flags::check_segment_graph(graph, flagstaff_flags::limits::MAX_REF_CHAIN) {
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

/// Flags and segments whose definitions reference `segment`.
fn segment_users(space: &Namespace, segment: &str) -> Vec<String> {
    let flags = space
        .flags
        .iter()
        .filter(|(_, item)| references(ChangeKind::Flag, &item.definition).contains(segment))
        .map(|(k, _)| format!("flag {k}"));
    let segments = space
        .segments
        .iter()
        .filter(|(k, item)| {
            k.as_str() != segment
                && references(ChangeKind::Segment, &item.definition).contains(segment)
        })
        .map(|(k, _)| format!("segment {k}"));
    flags.chain(segments).collect()
}
