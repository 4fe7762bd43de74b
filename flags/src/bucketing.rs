//! The two ways flagd's `fractional` turns a bucketing value into a 32-bit hash.
//!
//! Both hash with [`murmur3_x86_32`] (seed 0) and place the user at
//! `bucket = (hash * total_weight) >> 32`; they differ in the bytes hashed:
//!
//! - [`FractionalAlgorithm::V2`] (flagd's daemon, the Go, Java, .NET and Node providers, and
//!   Flagstaff before it knew another): the UTF-8 of the bucketing string, or of the flag key
//!   followed by the targeting key when the rule names no bucketing value.
//! - [`FractionalAlgorithm::V3`] (the Python provider from `openfeature-flagd-core` 2.0): the
//!   canonical CBOR (RFC 8949 §4.2.1 core deterministic encoding as Python's `cbor2` writes it
//!   with `canonical=True`) of the bucketing value, any JSON value; of the array
//!   `[flagKey, targetingKey]` when the rule names none. Floats without a fractional part in
//!   [-2⁶³, 2⁶⁴) are written as integers first.
//!
//! Which one a flag uses is its definition's `fractionalAlgorithm` (absent: `v2`, so stored
//! flags keep their assignments). Frozen by `tests/cases/bucketing.json` and
//! `tests/cases/bucketing_v3.json`.

use crate::murmur3::murmur3_x86_32;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How `fractional` hashes the bucketing value: see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FractionalAlgorithm {
    /// The string's UTF-8 bytes (flagKey + targetingKey by default).
    #[default]
    V2,
    /// The value's canonical CBOR (`[flagKey, targetingKey]` by default).
    V3,
}

impl FractionalAlgorithm {
    /// `"v2"` or `"v3"`, as written in definitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// Parses `"v2"` / `"v3"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v2" => Some(Self::V2),
            "v3" => Some(Self::V3),
            _ => None,
        }
    }
}

/// The v3 hash of the default bucketing value `[flag_key, targeting_key]`, without building it.
pub(crate) fn v3_pair_hash(flag_key: &str, targeting_key: &str) -> u32 {
    let (mut a, mut b) = ([0u8; 9], [0u8; 9]);
    let ha = head(&mut a, 3, flag_key.len() as u64);
    let hb = head(&mut b, 3, targeting_key.len() as u64);
    murmur3_x86_32(
        &[
            &[0x82],
            ha,
            flag_key.as_bytes(),
            hb,
            targeting_key.as_bytes(),
        ],
        0,
    )
}

/// The v3 hash of a string bucketing value, without copying it.
pub(crate) fn v3_text_hash(s: &str) -> u32 {
    let mut h = [0u8; 9];
    let head = head(&mut h, 3, s.len() as u64);
    murmur3_x86_32(&[head, s.as_bytes()], 0)
}

/// Canonical CBOR writer for the values a bucketing expression yields.
#[derive(Default)]
pub(crate) struct Cbor {
    pub(crate) out: Vec<u8>,
}

impl Cbor {
    fn head(&mut self, major: u8, n: u64) {
        let mut h = [0u8; 9];
        let bytes = head(&mut h, major, n);
        self.out.extend_from_slice(bytes);
    }

    pub(crate) fn null(&mut self) {
        self.out.push(0xf6);
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.out.push(if b { 0xf5 } else { 0xf4 });
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn array_head(&mut self, len: usize) {
        self.head(4, len as u64);
    }

    /// An integer in CBOR's shortest form.
    fn int(&mut self, n: i128) {
        if n >= 0 {
            self.head(0, n as u64);
        } else {
            self.head(1, (-1 - n) as u64);
        }
    }

    /// A number as `cbor2` writes it after flagd's normalisation: whole values in
    /// [-2⁶³, 2⁶⁴) as integers, anything else as the shortest float that holds it exactly.
    pub(crate) fn number(&mut self, x: f64) {
        if x.is_finite() && x.fract() == 0.0 && (-(2f64.powi(63))..2f64.powi(64)).contains(&x) {
            // Exact: a whole f64 in this range converts to i128 without rounding.
            self.int(x as i128);
            return;
        }
        if let Some(bits) = f16_bits(x) {
            self.out.push(0xf9);
            self.out.extend_from_slice(&bits.to_be_bytes());
        } else if f64::from(x as f32) == x || x.is_nan() {
            self.out.push(0xfa);
            self.out
                .extend_from_slice(&(x as f32).to_bits().to_be_bytes());
        } else {
            self.out.push(0xfb);
            self.out.extend_from_slice(&x.to_bits().to_be_bytes());
        }
    }

    /// A JSON value; integers exactly as written, maps with keys in canonical order (shorter
    /// first, then bytewise).
    pub(crate) fn json(&mut self, v: &Value) {
        match v {
            Value::Null => self.null(),
            Value::Bool(b) => self.bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => self.int(i128::from(u)),
                (None, Some(i)) => self.int(i128::from(i)),
                _ => self.number(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => self.text(s),
            Value::Array(items) => {
                self.array_head(items.len());
                for item in items {
                    self.json(item);
                }
            }
            Value::Object(map) => self.map(map),
        }
    }

    pub(crate) fn map(&mut self, map: &Map<String, Value>) {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        self.head(5, keys.len() as u64);
        for k in keys {
            self.text(k);
            self.json(&map[k.as_str()]);
        }
    }
}

/// A CBOR item head (major type and argument) in its shortest form, written into `buf`.
fn head(buf: &mut [u8; 9], major: u8, n: u64) -> &[u8] {
    let m = major << 5;
    let len = if n < 24 {
        buf[0] = m | n as u8;
        1
    } else if n <= 0xff {
        buf[0] = m | 24;
        buf[1] = n as u8;
        2
    } else if n <= 0xffff {
        buf[0] = m | 25;
        buf[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        3
    } else if n <= 0xffff_ffff {
        buf[0] = m | 26;
        buf[1..5].copy_from_slice(&(n as u32).to_be_bytes());
        5
    } else {
        buf[0] = m | 27;
        buf[1..9].copy_from_slice(&n.to_be_bytes());
        9
    };
    &buf[..len]
}

/// The IEEE half-precision bits of `x` when it holds `x` exactly (NaN as `cbor2` writes it).
/// Only called for values that are not whole numbers in the integer range, so never for 0.
fn f16_bits(x: f64) -> Option<u16> {
    if x.is_nan() {
        return Some(0x7e00);
    }
    if x.is_infinite() {
        return Some(if x > 0.0 { 0x7c00 } else { 0xfc00 });
    }
    if x == 0.0 {
        return Some(if x.is_sign_negative() { 0x8000 } else { 0 });
    }
    let sign: u16 = if x < 0.0 { 0x8000 } else { 0 };
    let a = x.abs();
    // a = m · 2^e with m odd.
    let bits = a.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mut m, mut e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    let tz = m.trailing_zeros();
    m >>= tz;
    e += tz as i32;
    let width = 64 - m.leading_zeros() as i32;
    let top = e + width - 1; // the exponent of the highest set bit
    if width > 11 || e < -24 || top > 15 {
        return None;
    }
    if top >= -14 {
        // Normal: 1.f × 2^top, ten fraction bits.
        let fraction = ((m << (10 - (width - 1))) & 0x3ff) as u16;
        Some(sign | (((top + 15) as u16) << 10) | fraction)
    } else {
        // Subnormal: k × 2^-24.
        Some(sign | ((m << (e + 24)) as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(v: &Value) -> String {
        let mut c = Cbor::default();
        c.json(v);
        c.out.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn num_hex(x: f64) -> String {
        let mut c = Cbor::default();
        c.number(x);
        c.out.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Byte strings written by Python's `cbor2.dumps(value, canonical=True)` (cbor2 5.9.0),
    /// after flagd-core's number normalisation.
    #[test]
    fn matches_cbor2_canonical() {
        let cases = [
            (json!({"b": 1, "aa": 2, "a": 3}), "a361610361620162616102"),
            (json!(-1), "20"),
            (json!(-24), "37"),
            (json!(-25), "3818"),
            (json!(18446744073709551615u64), "1bffffffffffffffff"),
            (json!(i64::MIN), "3b7fffffffffffffff"),
            (json!("x"), "6178"),
            (json!(true), "f5"),
            (json!(null), "f6"),
            (json!([1, "a"]), "82016161"),
        ];
        for (v, want) in cases {
            assert_eq!(hex(&v), want, "{v}");
        }
        let floats = [
            (1.5, "f93e00"),
            (0.1, "fb3fb999999999999a"),
            (100000.5, "fa47c35040"),
            (1e300, "fb7e37e43c8800759c"),
            (3.0, "03"),
            (65504.0, "19ffe0"),
            (1e-8, "fb3e45798ee2308c3a"),
            (5e-324, "fb0000000000000001"),
            (1.0009765625, "f93c01"),
            (6.103515625e-05, "f90400"),
            (5.960464477539063e-08, "f90001"),
            (2048.5, "fa45000800"),
            (0.333251953125, "f93555"),
            (-0.5, "f9b800"),
            (18446744073709551616.0, "fa5f800000"),
        ];
        for (x, want) in floats {
            assert_eq!(num_hex(x), want, "{x}");
        }
    }

    #[test]
    fn pair_and_text_hashes_are_the_encoded_values() {
        let mut c = Cbor::default();
        c.array_head(2);
        c.text("flag");
        c.text(&"k".repeat(300));
        assert_eq!(
            v3_pair_hash("flag", &"k".repeat(300)),
            murmur3_x86_32(&[&c.out], 0)
        );
        let mut c = Cbor::default();
        c.text("tenant-42");
        assert_eq!(v3_text_hash("tenant-42"), murmur3_x86_32(&[&c.out], 0));
    }
}
