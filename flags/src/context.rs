//! The evaluation context: attributes, the targeting key and the evaluation time.

use crate::evaluation::{ErrorCode, EvaluationError};
use serde_json::{Map, Value};

/// What a flag is evaluated for: the targeting key, any attributes, and the time of evaluation
/// (Unix seconds, exposed to rules as `$flagd.timestamp`; this crate never reads a clock).
///
/// As in flagd, the targeting key is the context entry `targetingKey`, so rules read it with
/// `{"var": "targetingKey"}`. Attribute lookups in rules are map lookups on this context; it is
/// built once per request and can be reused for any number of flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    attributes: Map<String, Value>,
    timestamp: i64,
}

impl Context {
    /// An empty context evaluated at `timestamp` (Unix seconds).
    pub fn new(timestamp: i64) -> Self {
        Self {
            attributes: Map::new(),
            timestamp,
        }
    }

    /// A context from an attribute map (which may hold `targetingKey`).
    pub fn from_attributes(attributes: Map<String, Value>, timestamp: i64) -> Self {
        Self {
            attributes,
            timestamp,
        }
    }

    /// A context from request JSON, as OFREP sends it: an object whose `targetingKey`, if
    /// present and not null, is a string. Anything else is `INVALID_CONTEXT`. A missing context
    /// (`null`) is an empty one.
    pub fn from_json(value: &Value, timestamp: i64) -> Result<Self, EvaluationError> {
        match value {
            Value::Null => Ok(Self::new(timestamp)),
            Value::Object(map) => match map.get("targetingKey") {
                None | Some(Value::Null) | Some(Value::String(_)) => {
                    Ok(Self::from_attributes(map.clone(), timestamp))
                }
                Some(other) => Err(EvaluationError::new(
                    ErrorCode::InvalidContext,
                    format!("targetingKey must be a string, found {other}"),
                )),
            },
            other => Err(EvaluationError::new(
                ErrorCode::InvalidContext,
                format!("the evaluation context must be a JSON object, found {other}"),
            )),
        }
    }

    /// Sets the targeting key.
    pub fn with_targeting_key(mut self, key: impl Into<String>) -> Self {
        self.attributes
            .insert("targetingKey".to_string(), Value::String(key.into()));
        self
    }

    /// Sets one attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the evaluation time (Unix seconds).
    pub fn set_timestamp(&mut self, timestamp: i64) {
        self.timestamp = timestamp;
    }

    /// The evaluation time (Unix seconds).
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The targeting key, when it is a string.
    pub fn targeting_key(&self) -> Option<&str> {
        self.attributes.get("targetingKey").and_then(Value::as_str)
    }

    /// All attributes, `targetingKey` included.
    pub fn attributes(&self) -> &Map<String, Value> {
        &self.attributes
    }

    /// Mutable access to the attributes.
    pub fn attributes_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.attributes
    }

    /// Whether this context, as compact JSON, would take more than `limit` bytes. An estimate
    /// (a number counts 8 bytes, escapes are not counted) that stops as soon as it passes
    /// `limit`, so it costs at most about `limit` bytes' worth of values; a context nested deeper
    /// than [`MAX_CONTEXT_DEPTH`] counts as too large. Allocates nothing.
    pub fn exceeds_bytes(&self, limit: usize) -> bool {
        let mut left = limit;
        !object_fits(&self.attributes, 0, &mut left)
    }
}

/// How deeply a context's values may nest for [`Context::exceeds_bytes`].
pub const MAX_CONTEXT_DEPTH: usize = 64;

/// Takes the object's size from `left`; false once it runs out or nests too deep.
fn object_fits(map: &Map<String, Value>, depth: usize, left: &mut usize) -> bool {
    take(left, 2)
        && map
            .iter()
            .all(|(k, v)| take(left, k.len() + 4) && value_fits(v, depth + 1, left))
}

fn value_fits(value: &Value, depth: usize, left: &mut usize) -> bool {
    if depth > MAX_CONTEXT_DEPTH {
        return false;
    }
    match value {
        Value::Null | Value::Bool(_) => take(left, 5),
        Value::Number(_) => take(left, 8),
        Value::String(s) => take(left, s.len() + 2),
        Value::Array(items) => {
            take(left, 2)
                && items
                    .iter()
                    .all(|v| take(left, 1) && value_fits(v, depth + 1, left))
        }
        Value::Object(map) => object_fits(map, depth, left),
    }
}

fn take(left: &mut usize, n: usize) -> bool {
    match left.checked_sub(n) {
        Some(rest) => {
            *left = rest;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> Context {
        Context::from_json(&v, 0).unwrap()
    }

    #[test]
    fn size_estimates_follow_the_json_text() {
        // {"a":"xyz"} is 11 bytes: the estimate counts 2 + (1 + 4) + (3 + 2) = 12.
        let c = ctx(json!({"a": "xyz"}));
        assert!(!c.exceeds_bytes(12));
        assert!(c.exceeds_bytes(11));
        let big = ctx(json!({"items": vec!["x".repeat(10); 1000]}));
        let text = serde_json::to_string(big.attributes()).unwrap().len();
        assert!(!big.exceeds_bytes(text + 100));
        assert!(big.exceeds_bytes(text - 100));
    }

    #[test]
    fn deep_contexts_count_as_too_large() {
        let deep = (0..MAX_CONTEXT_DEPTH + 1).fold(json!(1), |v, _| json!([v]));
        assert!(ctx(json!({"d": deep})).exceeds_bytes(usize::MAX));
        let ok = (0..MAX_CONTEXT_DEPTH - 2).fold(json!(1), |v, _| json!([v]));
        assert!(!ctx(json!({"d": ok})).exceeds_bytes(usize::MAX));
    }
}
