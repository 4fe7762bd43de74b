//! Runtime values and JsonLogic's coercions.
//!
//! flagd's providers follow the JsonLogic reference implementation (json-logic-js), whose
//! operators coerce like JavaScript: truthiness, `==`, `<` and arithmetic below reproduce those
//! rules for JSON values. Values borrow from the context and the compiled rule, so evaluating a
//! rule that only compares allocates nothing. Built strings and lists are shared (`Rc`), so
//! passing one around (a `reduce` accumulator, a `map` item) never copies it.
//!
//! Every operation whose cost grows with its operands charges the evaluation's [`Budget`]:
//! one step per element walked, a step per 64 bytes scanned, and the bytes of what it builds.
//! When the budget is exhausted the operation stops early; the evaluation's result is then
//! discarded, so what a stopped operation returns does not matter.

use crate::limits::{Budget, LIST_SLOT_BYTES};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt::Write;
use std::rc::Rc;

#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    String(Rc<str>),
    /// A JSON array from the context or a constant.
    Arr(&'a [Value]),
    /// An array computed during evaluation.
    List(Rc<List<'a>>),
    Obj(&'a Map<String, Value>),
}

/// A list built during evaluation, with how deeply built lists nest inside it (1 for a list of
/// scalars), so that nesting stays bounded and so does every walk over it.
#[derive(Debug)]
pub(crate) struct List<'a> {
    pub(crate) items: Vec<Val<'a>>,
    pub(crate) depth: u32,
}

impl<'a> Val<'a> {
    pub(crate) fn from_json(v: &'a Value) -> Self {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(s),
            Value::Array(a) => Val::Arr(a),
            Value::Object(o) => Val::Obj(o),
        }
    }

    /// A built string, charged to `b`; `Null` when the budget is exhausted.
    pub(crate) fn string(s: String, b: &Budget) -> Self {
        if b.alloc(s.len() as u64) {
            Val::String(Rc::from(s))
        } else {
            Val::Null
        }
    }

    /// A built list, charged to `b`; `Null` when the budget is exhausted or it would nest too
    /// deeply.
    pub(crate) fn list(items: Vec<Val<'a>>, b: &Budget) -> Self {
        let inner = items
            .iter()
            .map(|v| match v {
                Val::List(l) => l.depth,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if b.alloc(items.len() as u64 * LIST_SLOT_BYTES) && b.depth(inner + 1) {
            Val::List(Rc::new(List {
                items,
                depth: inner + 1,
            }))
        } else {
            Val::Null
        }
    }

    pub(crate) fn empty_list() -> Self {
        Val::List(Rc::new(List {
            items: Vec::new(),
            depth: 1,
        }))
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::String(s) => Some(s),
            _ => None,
        }
    }

    /// Number of elements when this is an array.
    pub(crate) fn array_len(&self) -> Option<usize> {
        match self {
            Val::Arr(a) => Some(a.len()),
            Val::List(l) => Some(l.items.len()),
            _ => None,
        }
    }

    /// Element `i` when this is an array.
    pub(crate) fn element(&self, i: usize) -> Option<Val<'a>> {
        match self {
            Val::Arr(a) => a.get(i).map(Val::from_json),
            Val::List(l) => l.items.get(i).cloned(),
            _ => None,
        }
    }

    /// Field `key` when this is an object, or element `index` when this is an array.
    pub(crate) fn get(&self, key: &str, index: Option<usize>) -> Option<Val<'a>> {
        match self {
            Val::Obj(o) => o.get(key).map(Val::from_json),
            Val::Arr(_) | Val::List(_) => self.element(index?),
            _ => None,
        }
    }

    /// JsonLogic truthiness: like JavaScript, except that an empty array is false.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::String(s) => !s.is_empty(),
            Val::Arr(a) => !a.is_empty(),
            Val::List(l) => !l.items.is_empty(),
            Val::Obj(_) => true,
        }
    }

    /// JavaScript `Number(x)`.
    pub(crate) fn to_number(&self, b: &Budget) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(v) => f64::from(u8::from(*v)),
            Val::Num(n) => *n,
            Val::Str(s) => string_to_number(s),
            Val::String(s) => string_to_number(s),
            Val::Arr(_) | Val::List(_) => string_to_number(&self.to_js_string(b)),
            Val::Obj(_) => f64::NAN,
        }
    }

    /// JavaScript `parseFloat(x)`, which `+` and `*` use in json-logic-js.
    pub(crate) fn parse_float(&self, b: &Budget) -> f64 {
        match self {
            Val::Num(n) => *n,
            Val::Str(s) => parse_float_prefix(s),
            Val::String(s) => parse_float_prefix(s),
            Val::Null | Val::Bool(_) | Val::Obj(_) => f64::NAN,
            Val::Arr(_) | Val::List(_) => parse_float_prefix(&self.to_js_string(b)),
        }
    }

    /// JavaScript `String(x)`.
    pub(crate) fn to_js_string(&self, b: &Budget) -> String {
        let mut out = String::new();
        self.write_js(&mut out, false, b);
        out
    }

    /// Appends `String(x)`; inside an array (`Array.prototype.join`) null becomes "". Every
    /// byte appended is charged to `b`; returns `false` (having stopped early) when it runs out.
    pub(crate) fn write_js(&self, out: &mut String, in_array: bool, b: &Budget) -> bool {
        let before = out.len();
        match self {
            Val::Null => {
                if !in_array {
                    out.push_str("null");
                }
            }
            Val::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
            Val::Num(n) => write_js_number(*n, out),
            Val::Str(s) => return b.alloc(s.len() as u64) && push(out, s),
            Val::String(s) => return b.alloc(s.len() as u64) && push(out, s),
            Val::Arr(a) => {
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !(b.step() && Val::from_json(v).write_js(out, true, b)) {
                        return false;
                    }
                }
            }
            Val::List(l) => {
                for (i, v) in l.items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !(b.step() && v.write_js(out, true, b)) {
                        return false;
                    }
                }
            }
            Val::Obj(_) => out.push_str("[object Object]"),
        }
        b.alloc((out.len() - before) as u64)
    }

    fn is_compound(&self) -> bool {
        matches!(self, Val::Arr(_) | Val::List(_) | Val::Obj(_))
    }

    fn is_string(&self) -> bool {
        matches!(self, Val::Str(_) | Val::String(_))
    }

    /// JavaScript `==`. Two arrays or objects compare by content (JavaScript compares identity,
    /// which JSON values do not have; flagd's Go evaluator compares content).
    pub(crate) fn loose_eq(&self, other: &Val<'_>, b: &Budget) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Null, _) | (_, Val::Null) => false,
            (x, y) if x.is_compound() && y.is_compound() => x.strict_eq(y, b),
            (Val::Bool(_), _) => Val::Num(self.to_number(b)).loose_eq(other, b),
            (_, Val::Bool(_)) => self.loose_eq(&Val::Num(other.to_number(b)), b),
            (x, y) if x.is_compound() => Val::String(x.to_js_string(b).into()).loose_eq(y, b),
            (x, y) if y.is_compound() => x.loose_eq(&Val::String(y.to_js_string(b).into()), b),
            (x, y) if x.is_string() && y.is_string() => str_eq(x.as_str(), y.as_str(), b),
            (x, y) => x.to_number(b) == y.to_number(b),
        }
    }

    /// JavaScript `===` (arrays and objects by content, as for [`Val::loose_eq`]).
    pub(crate) fn strict_eq(&self, other: &Val<'_>, b: &Budget) -> bool {
        if !b.step() {
            return false;
        }
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(x), Val::Bool(y)) => x == y,
            (Val::Num(x), Val::Num(y)) => x == y,
            (x, y) if x.is_string() && y.is_string() => str_eq(x.as_str(), y.as_str(), b),
            (Val::Obj(x), Val::Obj(y)) => {
                // Objects come from the context or the rule, whose size is bounded; charge
                // their entries once.
                b.work((x.len() + y.len()) as u64) && x == y
            }
            (x, y) => match (x.array_len(), y.array_len()) {
                (Some(n), Some(m)) if n == m => {
                    (0..n).all(|i| match (x.element(i), y.element(i)) {
                        (Some(p), Some(q)) => p.strict_eq(&q, b),
                        _ => false,
                    })
                }
                _ => false,
            },
        }
    }

    /// JavaScript's abstract relational comparison: two strings compare as strings, anything
    /// else as numbers. `None` when either side is NaN (every comparison is then false).
    pub(crate) fn js_cmp(&self, other: &Val<'_>, b: &Budget) -> Option<Ordering> {
        let a_str = if self.is_compound() {
            None
        } else {
            self.as_str()
        };
        let b_str = if other.is_compound() {
            None
        } else {
            other.as_str()
        };
        match (a_str, b_str) {
            (Some(x), Some(y)) => {
                b.scan(x.len().min(y.len()));
                Some(cmp_utf16(x, y))
            }
            _ => {
                if self.is_compound() || other.is_compound() {
                    let x = prim(self, b);
                    let y = prim(other, b);
                    if let (Some(x), Some(y)) = (x.as_str(), y.as_str()) {
                        b.scan(x.len().min(y.len()));
                        return Some(cmp_utf16(x, y));
                    }
                    return x.to_number(b).partial_cmp(&y.to_number(b));
                }
                self.to_number(b).partial_cmp(&other.to_number(b))
            }
        }
    }

    /// Converts to JSON (NaN and infinities become null, as `JSON.stringify` does), charging
    /// each element and string byte to `b`; `Null` once it runs out.
    pub(crate) fn to_json(&self, b: &Budget) -> Value {
        if !b.step() {
            return Value::Null;
        }
        match self {
            Val::Null => Value::Null,
            Val::Bool(v) => Value::Bool(*v),
            Val::Num(n) => number_to_json(*n),
            Val::Str(s) if b.alloc(s.len() as u64) => Value::String((*s).to_string()),
            Val::String(s) if b.alloc(s.len() as u64) => Value::String(s.to_string()),
            Val::Str(_) | Val::String(_) => Value::Null,
            Val::Arr(a) => Value::Array(a.iter().map(|v| Val::from_json(v).to_json(b)).collect()),
            Val::List(l) => Value::Array(l.items.iter().map(|v| v.to_json(b)).collect()),
            Val::Obj(o) if b.work(o.len() as u64) => Value::Object((*o).clone()),
            Val::Obj(_) => Value::Null,
        }
    }
}

fn push(out: &mut String, s: &str) -> bool {
    out.push_str(s);
    true
}

fn str_eq(x: Option<&str>, y: Option<&str>, b: &Budget) -> bool {
    match (x, y) {
        (Some(x), Some(y)) => x.len() == y.len() && b.scan(x.len()) && x == y,
        _ => false,
    }
}

fn prim<'a>(v: &Val<'a>, b: &Budget) -> Val<'a> {
    match v {
        Val::Arr(_) | Val::List(_) | Val::Obj(_) => Val::String(v.to_js_string(b).into()),
        other => other.clone(),
    }
}

/// JavaScript compares strings by UTF-16 code units.
fn cmp_utf16(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

pub(crate) fn number_to_json(n: f64) -> Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// JavaScript `Number(string)`: surrounding whitespace ignored, empty is 0, otherwise the whole
/// string must be a number (decimal, or `0x`/`0o`/`0b` integer, or `Infinity`).
fn string_to_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            return u64::from_str_radix(digits, radix).map_or(f64::NAN, |v| v as f64);
        }
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    // Rust accepts "inf", "nan" and "1e5" style; JavaScript only the last.
    if t.bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

/// JavaScript `parseFloat`: the longest leading decimal number after leading whitespace.
fn parse_float_prefix(s: &str) -> f64 {
    let t = s.trim_start();
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    if t[i..].starts_with("Infinity") {
        return if b.first() == Some(&b'-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut mantissa_digits = i - digits_start;
    if i < b.len() && b[i] == b'.' {
        let dot = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        mantissa_digits += i - dot - 1;
        if mantissa_digits == 0 {
            return f64::NAN;
        }
    }
    if mantissa_digits == 0 {
        return f64::NAN;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let exp_start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_start {
            i = j;
        }
    }
    t[..i].parse::<f64>().unwrap_or(f64::NAN)
}

/// JavaScript's `Number.prototype.toString()` for the values rules produce.
pub(crate) fn write_js_number(n: f64, out: &mut String) {
    if n.is_nan() {
        out.push_str("NaN");
    } else if n.is_infinite() {
        out.push_str(if n > 0.0 { "Infinity" } else { "-Infinity" });
    } else if n == 0.0 {
        out.push('0');
    } else if n.fract() == 0.0 && n.abs() < 1e21 {
        let _ = write!(out, "{}", n as i128);
    } else {
        let _ = write!(out, "{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coercions_follow_javascript() {
        assert_eq!(string_to_number(" 12 "), 12.0);
        assert_eq!(string_to_number(""), 0.0);
        assert!(string_to_number("12px").is_nan());
        assert!(string_to_number("inf").is_nan());
        assert_eq!(string_to_number("0x10"), 16.0);
        assert_eq!(parse_float_prefix("2.5abc"), 2.5);
        assert_eq!(parse_float_prefix("  -2e3x"), -2000.0);
        assert!(parse_float_prefix("abc").is_nan());
        assert!(parse_float_prefix(".").is_nan());
        assert_eq!(parse_float_prefix(".5"), 0.5);
        let mut s = String::new();
        write_js_number(1.0, &mut s);
        s.push(' ');
        write_js_number(1.5, &mut s);
        s.push(' ');
        write_js_number(-0.0, &mut s);
        assert_eq!(s, "1 1.5 0");
        let b = &Budget::new();
        assert!(Val::Num(1.0).loose_eq(&Val::Str("1"), b));
        assert!(Val::Bool(true).loose_eq(&Val::Num(1.0), b));
        assert!(!Val::Null.loose_eq(&Val::Num(0.0), b));
        assert!(!Val::Num(1.0).strict_eq(&Val::Str("1"), b));
        assert_eq!(
            Val::Str("10").js_cmp(&Val::Str("9"), b),
            Some(Ordering::Less)
        );
        assert_eq!(
            Val::Str("10").js_cmp(&Val::Num(9.0), b),
            Some(Ordering::Greater)
        );
        assert_eq!(Val::Null.js_cmp(&Val::Num(1.0), b), Some(Ordering::Less));
        assert!(!Val::Arr(&[]).truthy());
        assert!(Val::Str("0").truthy());
    }
}
