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
}
