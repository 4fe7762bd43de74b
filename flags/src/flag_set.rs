//! A compiled set of flags and segments, and evaluation against it.

use crate::context::Context;
use crate::evaluation::{ErrorCode, Evaluation, EvaluationError, Reason, Resolution};
use crate::fault::{Fault, Faults};
use crate::flag::{compile_flag, CompiledFlag, VariantType};
use crate::limits::Budget;
use crate::limits::MAX_REF_CHAIN;
use crate::refs::{segment_entries, Graph, Status};
use crate::rule::compile::{short_json, Compiler, RefLookup};
use crate::rule::eval::{eval_targeting, Env, Outcome};
use crate::rule::value::Val;
use crate::rule::Node;
use crate::validate::{document_flags, document_segments};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Flags and segments compiled for evaluation.
///
/// Built once when definitions arrive (not per call); evaluating walks a tree of compiled
/// nodes, never JSON. Evaluation is pure, never panics, and for boolean and numeric results
/// does not allocate. A `FlagSet` is `Send + Sync` and can be shared behind an `Arc`.
#[derive(Debug, Default)]
pub struct FlagSet {
    flags: HashMap<Box<str>, CompiledFlag, BuildHasherDefault<KeyHasher>>,
    metadata: Map<String, Value>,
    /// The keys of the flags that run an A/B test, sorted: found once per compile, so readers
    /// (the intake, the experiment list, the SDK's exposure counting) never scan every flag.
    experiments: Box<[Box<str>]>,
}

/// Each segment's compiled rule, or why it cannot be used (a cycle, a broken reference).
type LinkedSegments = HashMap<String, Result<Arc<Node>, String>>;

/// Compiles a namespace's segments once each, in an order where every segment comes after
/// those it references (one O(V+E) pass, `crate::refs::Graph`), so that a `$ref` always finds
/// its target already compiled.
fn link_segments(segments: &BTreeMap<String, Value>) -> (LinkedSegments, Vec<Fault>) {
    let entries = segment_entries(segments);
    let graph = Graph::new(&entries);
    let links = graph.analyse(MAX_REF_CHAIN);
    let mut linked = LinkedSegments::new();
    let mut faults = Vec::new();
    for &i in &links.order {
        let name = graph.names[i];
        let result = match links.status[i] {
            Status::InCycle(c) => {
                let why = format!("$ref cycle: {}", links.cycle_names(&graph, c).join(" -> "));
                faults.push(Fault::new(format!("$evaluators.{name}"), why.clone()));
                Err(why)
            }
            Status::TooDeep(chain) => {
                let why = format!(
                    "$ref chain passes through {chain} segments, more than {MAX_REF_CHAIN}"
                );
                faults.push(Fault::new(format!("$evaluators.{name}"), why.clone()));
                Err(why)
            }
            Status::Linked(_) | Status::Broken => {
                let resolve = |n: &str| lookup(&linked, segments, n);
                let mut compiler = Compiler::new(&resolve, None);
                // Evaluation compiles as flagd does (see `Faults::flagd_resolves`).
                compiler.faults.lenient = true;
                let node = compiler.compile_root(&segments[name], false);
                if compiler.faults.list.is_empty() {
                    Ok(Arc::new(node))
                } else {
                    let prefix = format!("$evaluators.{name}");
                    let fs: Vec<Fault> = compiler
                        .faults
                        .list
                        .into_iter()
                        .map(|f| f.prefixed(&prefix))
                        .collect();
                    let why = fs
                        .iter()
                        .map(Fault::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    faults.extend(fs);
                    Err(why)
                }
            }
        };
        linked.insert(name.to_string(), result);
    }
    (linked, faults)
}

/// What a `$ref` to `name` means once the segments are linked.
fn lookup(
    linked: &HashMap<String, Result<Arc<Node>, String>>,
    segments: &BTreeMap<String, Value>,
    name: &str,
) -> RefLookup {
    match linked.get(name) {
        Some(Ok(node)) => RefLookup::Found(Arc::clone(node)),
        Some(Err(why)) => RefLookup::Broken(why.clone()),
        None if segments.contains_key(name) => {
            RefLookup::Broken("it is on a $ref cycle".to_string())
        }
        None => RefLookup::Missing,
    }
}

impl FlagSet {
    /// Compiles a flagd document. Fails with every fault (as [`crate::validate_document`]
    /// reports them) if any part of it is invalid.
    pub fn from_document(doc: &Value) -> Result<Self, Vec<Fault>> {
        let (set, faults) = Self::from_document_lossy(doc);
        if faults.is_empty() {
            Ok(set)
        } else {
            Err(faults)
        }
    }

    /// Compiles a flagd document as far as possible: flags whose definitions are invalid are
    /// kept and evaluate to `PARSE_ERROR`, so one bad flag in a bootstrap or cache file does not
    /// take every other flag down. Returns the faults found.
    pub fn from_document_lossy(doc: &Value) -> (Self, Vec<Fault>) {
        let mut faults = Faults::new();
        let Value::Object(obj) = doc else {
            faults.add(format!(
                "a flagd document must be an object, found {}",
                short_json(doc)
            ));
            return (Self::default(), faults.list);
        };
        let segments = document_segments(obj.get("$evaluators"), &mut faults);
        let metadata = match obj.get("metadata") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        let flags = document_flags(obj.get("flags"), &mut faults);
        let (set, more) = Self::build(
            flags
                .iter()
                .filter_map(|(_, k, d)| k.as_deref().map(|k| (k, d))),
            &segments,
            &metadata,
        );
        let mut all = faults.list;
        all.extend(more);
        if let Err(fs) = crate::validate_document(doc) {
            // Document-level faults (unknown fields, bad metadata) that building does not see.
            for f in fs {
                if !all.contains(&f) {
                    all.push(f);
                }
            }
        }
        (set, all)
    }

    /// Compiles flags (key → definition) with the segments they may reference (name → rule) and
    /// the flag set's metadata. Constructs that flagd resolves at evaluation (a branch naming no
    /// variant, a `sem_ver` that cannot compare, a negative weight) evaluate as flagd does
    /// them; other invalid flags are kept and evaluate to `PARSE_ERROR`; the faults
    /// are returned with paths `flags.KEY…` and `$evaluators.NAME…`.
    pub fn build<'d>(
        flags: impl IntoIterator<Item = (&'d str, &'d Value)>,
        segments: &BTreeMap<String, Value>,
        metadata: &Map<String, Value>,
    ) -> (Self, Vec<Fault>) {
        // Every segment is compiled, used or not, so that their faults are reported.
        let (linked, mut all) = link_segments(segments);
        let resolve = |n: &str| lookup(&linked, segments, n);
        let mut compiled: HashMap<Box<str>, CompiledFlag, BuildHasherDefault<KeyHasher>> =
            HashMap::default();
        let mut faults = Vec::new();
        for (key, def) in flags {
            let flag = match compile_flag(key, def, &resolve, Some(metadata), Some(&mut Vec::new()))
            {
                Ok(flag) => flag,
                Err(fs) => {
                    let fs: Vec<Fault> = fs
                        .into_iter()
                        .map(|f| f.prefixed(&format!("flags.{key}")))
                        .collect();
                    let flag_meta = match def.get("metadata") {
                        Some(Value::Object(m)) => {
                            let mut merged = metadata.clone();
                            merged.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
                            merged
                        }
                        _ => metadata.clone(),
                    };
                    let broken = CompiledFlag::broken(key, &fs, flag_meta);
                    faults.extend(fs);
                    broken
                }
            };
            compiled.insert(Box::from(key), flag);
        }
        all.extend(faults);
        let mut experiments: Vec<Box<str>> = compiled
            .iter()
            .filter(|(_, f)| f.experiment().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        experiments.sort_unstable();
        (
            Self {
                flags: compiled,
                metadata: metadata.clone(),
                experiments: experiments.into_boxed_slice(),
            },
            all,
        )
    }

    /// The keys of the flags with an `experiment` field, sorted.
    pub fn experiment_keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.experiments.iter().map(AsRef::as_ref)
    }

    /// The compiled flag with `key`.
    pub fn get(&self, key: &str) -> Option<&CompiledFlag> {
        self.flags.get(key)
    }

    /// All flag keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(AsRef::as_ref)
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether there are no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The flag set's metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// Evaluates flag `key` for `ctx`, untyped. Follows flagd
    /// (<https://flagd.dev/reference/flag-definitions/>):
    /// - unknown key → `ERROR` / `FLAG_NOT_FOUND`; a definition that failed to compile →
    ///   `ERROR` / `PARSE_ERROR`;
    /// - `DISABLED` → reason `DISABLED` with the default variant (no value without one);
    /// - no targeting → `STATIC` with the default variant, or `DEFAULT` with no value when
    ///   there is no default variant (the caller's default applies);
    /// - targeting returns a variant name, or `true`/`false` for variants named so →
    ///   `TARGETING_MATCH` (`SPLIT` when a `fractional` chose it);
    /// - targeting returns `null` → `DEFAULT` with the default variant (or no value);
    /// - targeting returns anything else (a name that is not a variant, a number, an object) →
    ///   `ERROR` / `GENERAL`.
    pub fn resolve<'a>(&'a self, key: &str, ctx: &'a Context) -> Resolution<'a> {
        let Some(flag) = self.flags.get(key) else {
            return self.error(&self.metadata, ErrorCode::FlagNotFound, || {
                format!("flag \"{key}\" not found")
            });
        };
        self.resolve_flag(flag, ctx)
    }

    fn error<'a>(
        &'a self,
        metadata: &'a Map<String, Value>,
        code: ErrorCode,
        message: impl FnOnce() -> String,
    ) -> Resolution<'a> {
        Resolution {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some(EvaluationError::new(code, message())),
            metadata,
        }
    }

    fn resolve_flag<'a>(&'a self, flag: &'a CompiledFlag, ctx: &'a Context) -> Resolution<'a> {
        flag.mark_evaluated();
        if let Some(why) = &flag.broken {
            return self.error(&flag.metadata, ErrorCode::ParseError, || {
                format!("flag \"{}\" has an invalid definition: {why}", flag.key)
            });
        }
        let default = |reason| {
            let (variant, value) = match flag.default_variant {
                Some(i) => {
                    let (n, v) = &flag.variants[i];
                    (Some(n.as_ref()), Some(v))
                }
                None => (None, None),
            };
            Resolution {
                value,
                variant,
                reason,
                error: None,
                metadata: &flag.metadata,
            }
        };
        if !flag.enabled {
            return default(Reason::Disabled);
        }
        let Some(targeting) = &flag.targeting else {
            return if flag.default_variant.is_some() {
                default(Reason::Static)
            } else {
                default(Reason::Default)
            };
        };
        let mut env = Env::new(ctx.attributes(), &flag.key, ctx.timestamp());
        env.fractional = flag.fractional;
        let (outcome, split) = eval_targeting(targeting, &env);
        if let Some(why) = env.budget.exceeded() {
            return self.error(&flag.metadata, ErrorCode::General, || {
                format!(
                    "evaluation of flag \"{}\" was stopped: {}",
                    flag.key,
                    why.describe()
                )
            });
        }
        let result = match outcome {
            // A constant variant name was resolved to its index when the flag was compiled.
            Outcome::Variant(i, _) => {
                if let Some((n, v)) = flag.variants.get(i) {
                    return Resolution {
                        value: Some(v),
                        variant: Some(n),
                        reason: if split {
                            Reason::Split
                        } else {
                            Reason::TargetingMatch
                        },
                        error: None,
                        metadata: &flag.metadata,
                    };
                }
                outcome.into_val()
            }
            Outcome::Value(v) => v,
        };
        let name = match &result {
            Val::Null => return default(Reason::Default),
            Val::Bool(true) => "true",
            Val::Bool(false) => "false",
            Val::Str(s) => s,
            Val::String(s) => s,
            other => {
                return self.error(&flag.metadata, ErrorCode::General, || {
                    format!(
                        "targeting of flag \"{}\" returned {}, which is not a variant name",
                        flag.key,
                        describe(other)
                    )
                })
            }
        };
        match flag.variant_index(name) {
            Some(i) => {
                let (n, v) = &flag.variants[i];
                Resolution {
                    value: Some(v),
                    variant: Some(n),
                    reason: if split {
                        Reason::Split
                    } else {
                        Reason::TargetingMatch
                    },
                    error: None,
                    metadata: &flag.metadata,
                }
            }
            None => self.error(&flag.metadata, ErrorCode::General, || {
                format!(
                    "targeting of flag \"{}\" returned \"{name}\", which is not a variant",
                    flag.key
                )
            }),
        }
    }

    /// Evaluates every flag for `ctx` (bulk evaluation), in no particular order.
    pub fn resolve_all<'a>(
        &'a self,
        ctx: &'a Context,
    ) -> impl Iterator<Item = (&'a str, Resolution<'a>)> + 'a {
        self.flags
            .iter()
            .map(move |(k, f)| (k.as_ref(), self.resolve_flag(f, ctx)))
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        ctx: &'a Context,
        default: T,
        want: VariantType,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Evaluation<'a, T> {
        let r = match self.flags.get(key) {
            Some(flag) => {
                if let Some(t) = flag.variant_type {
                    if t != want {
                        return mismatch(key, default, want, t, &flag.metadata);
                    }
                }
                self.resolve_flag(flag, ctx)
            }
            None => self.resolve(key, ctx),
        };
        match r.value {
            None => Evaluation {
                value: default,
                variant: None,
                reason: r.reason,
                error: r.error,
                metadata: r.metadata,
            },
            Some(v) => match convert(v) {
                Some(value) => Evaluation {
                    value,
                    variant: r.variant,
                    reason: r.reason,
                    error: None,
                    metadata: r.metadata,
                },
                None => Evaluation {
                    value: default,
                    variant: None,
                    reason: Reason::Error,
                    error: Some(EvaluationError::new(
                        ErrorCode::TypeMismatch,
                        format!("flag \"{key}\" value {} is not {want:?}", short_json(v)),
                    )),
                    metadata: r.metadata,
                },
            },
        }
    }

    /// Evaluates a boolean flag; `default` is returned on any fault or when the flag has no
    /// default variant. Allocates nothing unless evaluation fails.
    pub fn boolean<'a>(
        &'a self,
        key: &str,
        ctx: &'a Context,
        default: bool,
    ) -> Evaluation<'a, bool> {
        self.typed(key, ctx, default, VariantType::Boolean, Value::as_bool)
    }

    /// Evaluates a string flag, borrowing the value from the flag set.
    pub fn string<'a>(
        &'a self,
        key: &str,
        ctx: &'a Context,
        default: &'a str,
    ) -> Evaluation<'a, &'a str> {
        self.typed(key, ctx, default, VariantType::String, Value::as_str)
    }

    /// Evaluates an integer flag. A variant that is not a whole number in `i64` range is a
    /// `TYPE_MISMATCH`. Allocates nothing unless evaluation fails.
    pub fn integer<'a>(&'a self, key: &str, ctx: &'a Context, default: i64) -> Evaluation<'a, i64> {
        self.typed(key, ctx, default, VariantType::Number, |v| {
            v.as_i64().or_else(|| {
                let f = v.as_f64()?;
                (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64)
                    .then_some(f as i64)
            })
        })
    }

    /// Evaluates a number flag as `f64`. Allocates nothing unless evaluation fails.
    pub fn float<'a>(&'a self, key: &str, ctx: &'a Context, default: f64) -> Evaluation<'a, f64> {
        self.typed(key, ctx, default, VariantType::Number, Value::as_f64)
    }

    /// Evaluates an object flag, borrowing the value (a JSON object) from the flag set.
    pub fn object<'a>(
        &'a self,
        key: &str,
        ctx: &'a Context,
        default: &'a Value,
    ) -> Evaluation<'a, &'a Value> {
        self.typed(key, ctx, default, VariantType::Object, |v| {
            v.is_object().then_some(v)
        })
    }
}

/// A computed value shortened for a message, with a small budget of its own: it may be huge.
fn describe(v: &Val<'_>) -> String {
    let budget = Budget::with(1_000, 4_096);
    let json = v.to_json(&budget);
    if budget.ok() {
        short_json(&json)
    } else {
        "a value too large to show".to_string()
    }
}

fn mismatch<'a, T>(
    key: &str,
    default: T,
    want: VariantType,
    got: VariantType,
    metadata: &'a Map<String, Value>,
) -> Evaluation<'a, T> {
    Evaluation {
        value: default,
        variant: None,
        reason: Reason::Error,
        error: Some(EvaluationError::new(
            ErrorCode::TypeMismatch,
            format!("flag \"{key}\" has {got:?} variants, {want:?} was requested"),
        )),
        metadata,
    }
}

/// FNV-1a over the key bytes, 8 at a time. Flag keys are chosen by operators, not by the
/// callers who look them up (a lookup never inserts), so a keyed DoS-resistant hash buys
/// nothing here and costs a third of a static flag's evaluation.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 29;
        }
        for b in chunks.remainder() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        // Final avalanche so that the low bits hashbrown uses depend on every input byte.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}
