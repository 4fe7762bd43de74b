//! Which `fractional` hash a connecting provider runs, and whether a namespace may be served to
//! it: a provider that would put a user in a different bucket than Flagstaff does is refused,
//! so an application never shows a variant the service would not.
//!
//! A flag's algorithm is its `fractionalAlgorithm` (absent: v2). A provider's is, first, what
//! it declares in the `flagstaff-fractional` metadata header (`v2` or `v3`); otherwise what its
//! gRPC library tells of its language in `user-agent`, mapped to what that language's stock
//! provider runs today:
//!
//! | user-agent     | provider                                      | algorithm |
//! |----------------|-----------------------------------------------|-----------|
//! | `grpc-python/` | `openfeature-provider-flagd` 0.6 (flagd-core 2) | v3      |
//! | `grpc-node-js/`| `@openfeature/flagd-provider` (flagd-core 4)  | v2        |
//! | `grpc-go/`     | flagd itself, the Go provider                 | v2        |
//! | `grpc-java`    | the Java provider                             | v2        |
//! | `grpc-dotnet/`, `grpc-csharp/` | the .NET provider             | v2        |
//! | `tonic/`       | the Rust provider                             | v2        |
//!
//! Anything else is unknown: it is served namespaces without `fractional`, and must declare
//! its algorithm for the rest. A provider that runs another algorithm than its language's
//! default (an older Python provider runs v2) declares it.

use std::collections::BTreeSet;

use flagstaff_flags::{rule_refs, FractionalAlgorithm, FLAGSTAFF_FLAG_FIELDS};
use serde_json::{Map, Value};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The metadata header a provider may declare its algorithm in.
pub const HEADER: &str = "flagstaff-fractional";

/// What a connecting provider runs.
#[derive(Debug, Clone)]
pub struct Provider {
    /// `None`: neither declared nor known from its user-agent.
    pub algorithm: Option<FractionalAlgorithm>,
    /// How it was learnt, for error messages and the log.
    pub learnt_from: String,
}

const BY_AGENT: &[(&str, FractionalAlgorithm)] = &[
    ("grpc-python/", FractionalAlgorithm::V3),
    ("grpc-node-js/", FractionalAlgorithm::V2),
    ("grpc-go/", FractionalAlgorithm::V2),
    ("grpc-java", FractionalAlgorithm::V2),
    ("grpc-dotnet/", FractionalAlgorithm::V2),
    ("grpc-csharp/", FractionalAlgorithm::V2),
    ("tonic/", FractionalAlgorithm::V2),
];

impl Provider {
    /// From the request's metadata; an unreadable declaration is `INVALID_ARGUMENT`.
    pub fn of(metadata: &MetadataMap) -> Result<Self, Status> {
        if let Some(v) = metadata.get(HEADER) {
            let text = v.to_str().unwrap_or_default().trim();
            let algorithm = FractionalAlgorithm::parse(text).ok_or_else(|| {
                Status::invalid_argument(format!("{HEADER}: {text:?} is not \"v2\" or \"v3\""))
            })?;
            return Ok(Self {
                algorithm: Some(algorithm),
                learnt_from: format!("declared in {HEADER}"),
            });
        }
        let agent = metadata
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // A user-agent may list several products ("grpc-python/1.76 grpc-c/51.0"): the first
        // one known decides.
        let found = agent
            .split_whitespace()
            .find_map(|word| BY_AGENT.iter().find(|(p, _)| word.starts_with(p)));
        Ok(Self {
            algorithm: found.map(|(_, a)| *a),
            learnt_from: format!("user-agent {agent:?}"),
        })
    }

    /// `Ok` when every `fractional` in the document hashes as this provider does; else
    /// `FAILED_PRECONDITION` naming the flags and the ways out.
    pub fn check(
        &self,
        ns: &str,
        flags: &Map<String, Value>,
        evaluators: &Map<String, Value>,
    ) -> Result<(), Status> {
        let mut wrong = Vec::new();
        for (key, def) in flags {
            if !splits(def, evaluators) {
                continue;
            }
            let flag_alg = def
                .get("fractionalAlgorithm")
                .and_then(Value::as_str)
                .and_then(FractionalAlgorithm::parse)
                .unwrap_or_default();
            if self.algorithm != Some(flag_alg) {
                wrong.push(format!("{key} ({})", flag_alg.as_str()));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = wrong.iter().take(10).map(String::as_str).collect();
        let more = wrong.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let runs = match self.algorithm {
            Some(a) => format!("this provider hashes fractional splits with {}", a.as_str()),
            None => "Flagstaff cannot tell how this provider hashes fractional splits".to_string(),
        };
        Err(Status::failed_precondition(format!(
            "namespace {ns:?} is not served to this provider: {runs} ({}), but these flags split \
             with another algorithm, so users would get other variants than Flagstaff gives them: \
             {}{more}. Set \"fractionalAlgorithm\" on those flags to what the provider runs (this \
             re-buckets their users), use a provider that runs theirs, or declare the provider's \
             algorithm in the {HEADER} metadata header if it was mistaken",
            self.learnt_from,
            shown.join(", ")
        )))
    }
}

/// Whether a flag's targeting, or a segment it reaches through `$ref`, has a `fractional`.
fn splits(def: &Value, evaluators: &Map<String, Value>) -> bool {
    let Some(targeting) = def.get("targeting") else {
        return false;
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![targeting];
    // Each segment is looked at once, so cycles and shared segments cost nothing extra.
    while let Some(rule) = todo.pop() {
        if has_fractional(rule) {
            return true;
        }
        for r in rule_refs(rule) {
            if let Some(seg) = evaluators.get(&r) {
                if seen.insert(r) {
                    todo.push(seg);
                }
            }
        }
    }
    false
}

fn has_fractional(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| k == "fractional" || has_fractional(v)),
        Value::Array(items) => items.iter().any(has_fractional),
        _ => false,
    }
}

/// Leaves flagd's fields only: stock providers refuse a flag with fields they do not know.
///
/// A disabled flag with a default variant is sent as an enabled flag without targeting: the
/// stock providers answer a disabled flag with the caller's default, Flagstaff with the
/// default variant's value, so this is how the provider answers what the service answers
/// (with reason `STATIC` rather than `DISABLED`). Without a default variant both answer the
/// caller's default, and the flag is sent as it is.
pub fn flagd_only(flags: &mut Map<String, Value>) {
    for def in flags.values_mut() {
        if let Value::Object(m) = def {
            for f in FLAGSTAFF_FLAG_FIELDS {
                m.remove(*f);
            }
            let disabled = m.get("state").and_then(Value::as_str) == Some("DISABLED");
            if disabled && m.get("defaultVariant").is_some_and(Value::is_string) {
                m.insert("state".into(), Value::String("ENABLED".into()));
                m.remove("targeting");
            }
        }
    }
}

/// Segments with the segments they `$ref` written in: flagd resolves a `$ref` in a flag's
/// targeting only, so a segment that references another (Flagstaff allows chains of up to
/// eight, without cycles) would not parse in a provider. `None` when the result would pass
/// `max_bytes`.
pub fn inline_segment_refs(
    evaluators: &Map<String, Value>,
    max_bytes: usize,
) -> Option<Map<String, Value>> {
    let mut done: Map<String, Value> = Map::new();
    let mut bytes = 0usize;
    // Segments in an order where each comes after those it references (the store keeps the
    // graph acyclic; a name it still cannot place is left as it is).
    let mut pending: Vec<&String> = evaluators.keys().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|name| {
            let rule = &evaluators[name.as_str()];
            let refs = rule_refs(rule);
            let ready = refs
                .iter()
                .all(|r| done.contains_key(r) || !evaluators.contains_key(r) || r == *name);
            if ready {
                let inlined = substitute(rule, &done);
                bytes += inlined.to_string().len();
                done.insert((*name).clone(), inlined);
            }
            !ready
        });
        if bytes > max_bytes {
            return None;
        }
        if pending.len() == before {
            for name in pending.drain(..) {
                done.insert(name.clone(), evaluators[name.as_str()].clone());
            }
        }
    }
    Some(done)
}

/// `rule` with every `{"$ref": name}` of a segment in `done` replaced by its rule.
fn substitute(rule: &Value, done: &Map<String, Value>) -> Value {
    if let Some(Value::String(name)) = rule
        .as_object()
        .filter(|m| m.len() == 1)
        .and_then(|m| m.get("$ref"))
    {
        if let Some(segment) = done.get(name) {
            return segment.clone();
        }
    }
    match rule {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), substitute(v, done)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, done)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider(headers: &[(&'static str, &'static str)]) -> Result<Provider, Status> {
        let mut m = MetadataMap::new();
        for (k, v) in headers {
            m.insert(*k, v.parse().expect("ascii"));
        }
        Provider::of(&m)
    }

    #[test]
    fn learns_the_algorithm() {
        let alg = |h| provider(h).expect("readable").algorithm;
        let py = [(
            "user-agent",
            "grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)",
        )];
        assert_eq!(alg(&py), Some(FractionalAlgorithm::V3));
        assert_eq!(
            alg(&[("user-agent", "grpc-node-js/1.14.3")]),
            Some(FractionalAlgorithm::V2)
        );
        assert_eq!(alg(&[("user-agent", "curl/8")]), None);
        assert_eq!(alg(&[]), None);
        let declared = [("user-agent", "grpc-python/1.76.0"), (HEADER, "v2")];
        assert_eq!(alg(&declared), Some(FractionalAlgorithm::V2));
        let err = provider(&[(HEADER, "v9")]).expect_err("not an algorithm");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn refuses_flags_that_split_otherwise() {
        let flags = json!({
            "plain": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"},
            "v2-split": {"state": "ENABLED", "variants": {"a": 1, "b": 2},
                "targeting": {"fractional": [["a", 1], ["b", 1]]}},
            "v3-split": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "fractionalAlgorithm": "v3",
                "targeting": {"if": [{"$ref": "half"}, "a", "b"]}},
        });
        let evaluators = json!({"half": {"fractional": [[true, 1], [false, 1]]}});
        let (flags, evaluators) = (flags.as_object().unwrap(), evaluators.as_object().unwrap());
        let node = provider(&[("user-agent", "grpc-node-js/1.14.3")]).unwrap();
        let err = node
            .check("web", flags, evaluators)
            .expect_err("v3-split is v3");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("v3-split (v3)"), "{}", err.message());
        assert!(!err.message().contains("v2-split"), "{}", err.message());
        let python = provider(&[("user-agent", "grpc-python/1.76.0")]).unwrap();
        let err = python
            .check("web", flags, evaluators)
            .expect_err("v2-split is v2");
        assert!(err.message().contains("v2-split (v2)"), "{}", err.message());
        let unknown = provider(&[]).unwrap();
        assert!(unknown.check("web", flags, evaluators).is_err());
        let plain: Map<String, Value> = flags
            .iter()
            .filter(|(k, _)| *k == "plain")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(unknown.check("web", &plain, evaluators).is_ok());
    }

    #[test]
    fn strips_flagstaff_fields_and_sends_disabled_flags_as_their_default() {
        let mut flags = json!({
            "f": {"state": "ENABLED", "variants": {"a": 1}, "description": "d",
                "tags": ["t"], "fractionalAlgorithm": "v3", "metadata": {"owner": "web"}},
            "off": {"state": "DISABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "b",
                "targeting": {"if": [true, "a", "b"]}},
            "off-no-default": {"state": "DISABLED", "variants": {"a": 1}},
        });
        flagd_only(flags.as_object_mut().unwrap());
        assert_eq!(
            flags,
            json!({
                "f": {"state": "ENABLED", "variants": {"a": 1}, "metadata": {"owner": "web"}},
                "off": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "b"},
                "off-no-default": {"state": "DISABLED", "variants": {"a": 1}},
            })
        );
    }

    #[test]
    fn segments_that_reference_segments_are_written_out() {
        let evaluators = json!({
            "staff": {"ends_with": [{"var": "email"}, "@x.io"]},
            "beta": {"or": [{"$ref": "staff"}, {"var": "beta"}]},
            "pilot": {"and": [{"$ref": "beta"}, {"$ref": "staff"}]},
        });
        let out = inline_segment_refs(evaluators.as_object().unwrap(), 1 << 20).unwrap();
        let staff = evaluators["staff"].clone();
        let beta = json!({"or": [staff.clone(), {"var": "beta"}]});
        assert_eq!(out["beta"], beta);
        assert_eq!(out["pilot"], json!({"and": [beta, staff]}));
        assert!(rule_refs(&Value::Object(out.clone())).is_empty());
        assert!(inline_segment_refs(evaluators.as_object().unwrap(), 10).is_none());
    }
}
