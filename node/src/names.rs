//! The naming rule of namespaces, flags, segments and keys, for every protocol.

use crate::error::ApiError;

/// Names of namespaces, flags and segments: 1–128 characters of `A-Z a-z 0-9 . _ -`, starting
/// with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what}: {name:?} is not a valid name (1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"
        )))
    }
}
