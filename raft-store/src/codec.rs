//! Binary encoding for everything this crate writes to disk or sends between nodes:
//! one format-version byte, then postcard.
//!
//! postcard's wire format is specified and stable across 1.x; the leading byte lets a later
//! release change a layout and still read what an earlier one wrote.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current format version. Bump it (and keep a decoder for the old one) when any encoded
/// type changes shape.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty buffer: no format-version byte")]
    Empty,
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    Version { found: u8 },
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes `value` as `[FORMAT_VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut out).map_err(CodecError::Postcard)?;
    Ok(out)
}

/// Decodes bytes written by [`encode`], refusing unknown format versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&found, _)) => Err(CodecError::Version { found }),
    }
}

/// Decodes a value written by [`encode`] from the front of `bytes`, and returns the bytes after
/// it (what a later release appended).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(postcard::take_from_bytes(rest)?),
        Some((&found, _)) => Err(CodecError::Version { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let v = (7u64, "flag".to_string(), Some(vec![1u8, 2]));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String, Option<Vec<u8>>) = decode(&bytes).unwrap();
        assert_eq!(back, v);

        let mut wrong = bytes.clone();
        wrong[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            decode::<(u64, String, Option<Vec<u8>>)>(&wrong),
            Err(CodecError::Version { .. })
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
