//! [`Definition`]: a flag or segment definition as the state holds it, parsed once.
//!
//! The log, snapshots, rows and backups carry a definition as its compact JSON text (postcard
//! cannot carry `serde_json::Value`). The text is parsed at most once: a flag or segment when it
//! enters the state (in `apply`, or when rows, a snapshot or a backup are loaded: the reference
//! index reads every item then), a history entry loaded from disk when it is first read. From
//! then on every reader (the reference index, the watch hub, the OFREP cache, the SDK snapshot,
//! history and admin reads) shares that one parse; a clone is a reference count. A change made
//! while the node runs shares the items' own definitions, so it costs no parse of its own; and a
//! long history loaded at start costs no parsing until someone reads it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::ChangeKind;

/// Compact JSON text and its parse. A text that is not JSON is kept (it was stored so: state
/// corruption, or a namespace description in the history) and has no [`json`](Self::json).
#[derive(Clone)]
pub struct Definition(Arc<Parsed>);

struct Parsed {
    text: Box<str>,
    json: OnceLock<Result<Value, String>>,
}

fn parse_text(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

impl Definition {
    /// Parses `text` now (every clone shares the result).
    pub fn parse(text: impl Into<Box<str>>) -> Self {
        let d = Self::unparsed(text.into());
        let _ = d.json();
        d
    }

    /// Keeps `text`, to be parsed when it is first read (or never: a namespace's description in
    /// the history is text).
    pub fn unparsed(text: impl Into<Box<str>>) -> Self {
        let text = text.into();
        Self(Arc::new(Parsed {
            text,
            json: OnceLock::new(),
        }))
    }

    /// The JSON text, as written to the log and to disk.
    pub fn text(&self) -> &str {
        &self.0.text
    }

    /// The parsed definition; the parser's message if the text is not JSON.
    pub fn json(&self) -> Result<&Value, &str> {
        let json = self.0.json.get_or_init(|| parse_text(&self.0.text));
        json.as_ref().map_err(String::as_str)
    }

    /// The parsed definition of item `key` (`kind`) in namespace `ns`. Definitions are validated
    /// before they are proposed, so a text that is not JSON means the state is corrupt: it is
    /// logged as an error naming the item, and the answer says how to mend it.
    pub fn stored_json(&self, ns: &str, kind: ChangeKind, key: &str) -> Result<&Value, String> {
        self.json().map_err(|e| {
            tracing::error!(ns, kind = kind.as_str(), key, error = %e, "stored definition does not parse (state corrupt)");
            format!(
                "the stored definition of {} {key:?} in namespace {ns:?} does not parse ({e}); replace it",
                kind.as_str()
            )
        })
    }

    /// [`stored_json`](Self::stored_json), copied, with `null` for a corrupt definition (logged;
    /// readers report `null` as an invalid flag or segment, never as a value).
    pub fn json_or_null(&self, ns: &str, kind: ChangeKind, key: &str) -> Value {
        self.stored_json(ns, kind, key)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Bytes of the text (what the size limits count).
    pub fn len(&self) -> usize {
        self.0.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.text.is_empty()
    }
}

impl PartialEq for Definition {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.text() == other.text()
    }
}

impl Eq for Definition {}

impl fmt::Debug for Definition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.text(), f)
    }
}

impl From<&str> for Definition {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

/// Written as its text: the stored form is unchanged, so earlier rows, snapshots and backups
/// read as before. Read back, it is parsed on its first use.
impl Serialize for Definition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text())
    }
}

impl<'de> Deserialize<'de> for Definition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Definition::unparsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_as_text_and_parsed_once_for_every_clone() {
        let d = Definition::parse(r#"{"state":"ENABLED"}"#);
        let bytes = postcard::to_allocvec(&d).unwrap();
        assert_eq!(
            bytes,
            postcard::to_allocvec(r#"{"state":"ENABLED"}"#).unwrap()
        );
        let back: Definition = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.json().unwrap()["state"], "ENABLED");
        let clone = d.clone();
        assert!(std::ptr::eq(clone.json().unwrap(), d.json().unwrap()));
        // Read back: parsed on first use, then shared by its clones too.
        let read_clone = back.clone();
        assert!(std::ptr::eq(
            read_clone.json().unwrap(),
            back.json().unwrap()
        ));
    }

    #[test]
    fn text_that_is_not_json_is_kept_with_its_fault() {
        let d: Definition =
            postcard::from_bytes(&postcard::to_allocvec("a description").unwrap()).unwrap();
        assert_eq!(d.text(), "a description");
        assert!(d.json().unwrap_err().contains("expected"));
        assert_eq!(d.len(), "a description".len());
    }
}
