//! What goes into the Raft log and what applying it answers.
//!
//! One log entry ([`Request`]) carries a batch of commands gathered by the node's proposer while
//! the previous batch was being flushed. Each command gets its own result and, when it changes
//! something, its own revision.

use serde::{Deserialize, Serialize};

/// One Raft log entry's application data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Wall-clock milliseconds since the Unix epoch, stamped by the leader when it proposed the
    /// entry. `apply` uses `max(previous, proposed_at_ms)` so time never goes backwards.
    pub proposed_at_ms: u64,
    pub commands: Vec<Envelope>,
}

/// One client command with who asked and how to deduplicate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub actor: Actor,
    pub idempotency: Option<IdempotencyKey>,
    pub command: Command,
}

/// Who made a change, as recorded in history (the token's name, never the secret).
pub type Actor = String;

/// A client-supplied (or node-generated) idempotency key with a fingerprint of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// `token-name/namespace/key`: keys are scoped so two callers cannot collide.
    pub scope: String,
    /// Hex SHA-256 of method, path and body; a reused key with another fingerprint is refused.
    pub fingerprint: String,
}

/// A precondition decided in `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Condition {
    #[default]
    None,
    /// `If-Match: "<version>"`: the item must exist with exactly this version.
    IfMatch(u64),
    /// `If-None-Match: *`: the item must not exist.
    CreateOnly,
}

/// A state change. Definitions are JSON text, validated by the node before proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    PutNamespace {
        ns: String,
        description: String,
        condition: Condition,
    },
    DeleteNamespace {
        ns: String,
        condition: Condition,
    },
    PutFlag {
        ns: String,
        key: String,
        definition: String,
        condition: Condition,
    },
    DeleteFlag {
        ns: String,
        key: String,
        condition: Condition,
    },
    PutSegment {
        ns: String,
        key: String,
        definition: String,
        condition: Condition,
    },
    DeleteSegment {
        ns: String,
        key: String,
        condition: Condition,
    },
    /// Replaces the namespace's flags and segments with a flagd document's, atomically (one
    /// revision). Creates the namespace if needed. Unchanged items keep their version.
    ImportFlagd {
        ns: String,
        flags: Vec<(String, String)>,
        segments: Vec<(String, String)>,
    },
    /// An SDK key bound to `ns`; only the SHA-256 of the secret is replicated.
    CreateSdkKey {
        ns: String,
        name: String,
        hash: String,
    },
    RevokeSdkKey {
        ns: String,
        name: String,
    },
    /// An extra admin token; only the SHA-256 of the secret is replicated.
    CreateAdminToken {
        name: String,
        hash: String,
    },
    RevokeAdminToken {
        name: String,
    },
    /// A/B test events one node gathered for `ns` in one interval (see `experiment_data`).
    /// Changes no flag: it spends no revision and writes no history.
    RecordEvents {
        ns: String,
        batch: crate::experiment_data::EventBatch,
    },
}

impl Command {
    pub fn namespace(&self) -> &str {
        match self {
            Command::PutNamespace { ns, .. }
            | Command::DeleteNamespace { ns, .. }
            | Command::PutFlag { ns, .. }
            | Command::DeleteFlag { ns, .. }
            | Command::PutSegment { ns, .. }
            | Command::DeleteSegment { ns, .. }
            | Command::ImportFlagd { ns, .. }
            | Command::CreateSdkKey { ns, .. }
            | Command::RevokeSdkKey { ns, .. }
            | Command::RecordEvents { ns, .. } => ns,
            Command::CreateAdminToken { .. } | Command::RevokeAdminToken { .. } => "",
        }
    }
}

/// The answer to one log entry: one result per command, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    pub results: Vec<CommandResult>,
}

pub type CommandResult = Result<Applied, ApplyError>;

/// A command that changed the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The cluster revision this change produced.
    pub revision: u64,
    /// Whether the command was a replay of an idempotent retry (nothing changed this time).
    pub replayed: bool,
}

/// Why a command changed nothing. Each maps to one HTTP status in the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("namespace {ns:?} does not exist")]
    NamespaceNotFound { ns: String },
    #[error("{kind} {key:?} does not exist in namespace {ns:?}")]
    NotFound {
        ns: String,
        kind: String,
        key: String,
    },
    #[error("precondition failed: current version is {current:?}")]
    PreconditionFailed { current: Option<u64> },
    #[error("{path}: segment {segment:?} does not exist in namespace {ns:?}")]
    UnknownSegment {
        ns: String,
        path: String,
        segment: String,
    },
    #[error("segment references form a cycle: {}", cycle.join(" -> "))]
    SegmentCycle { cycle: Vec<String> },
    #[error("segment {segment:?} is still referenced by {users:?}")]
    SegmentInUse { segment: String, users: Vec<String> },
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// A `$ref` chain through more segments than `flagstaff_flags::limits::MAX_REF_CHAIN`.
    #[error("{path}: the $ref chain from segment {segment:?} passes through {chain} segments, more than {max}")]
    SegmentChainTooLong {
        path: String,
        segment: String,
        chain: usize,
        max: usize,
    },
    /// A write over one of the limits in `StateLimits`.
    #[error("{path}: {actual} {what}, more than the limit of {limit}")]
    LimitExceeded {
        path: String,
        what: String,
        limit: usize,
        actual: usize,
    },
    /// A definition that is not JSON (the node validates before proposing, so only a
    /// corrupted or hand-made entry gets here).
    #[error("{path}: the definition is not valid JSON: {message}")]
    InvalidDefinition { path: String, message: String },
}
