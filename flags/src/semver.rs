//! flagd's `sem_ver` operator.
//!
//! flagd's daemon parses versions with Go's `golang.org/x/mod/semver` after prefixing a `v`
//! (a leading `V` is replaced): so `1`, `1.2` and `1.2.3-rc.1+build` are valid, `1.2.3.4` and
//! `01.2.3` are not. Shorthands compare as if padded with `.0` (`1.2` = `1.2.0`). Build metadata
//! is ignored when comparing. `^` matches the major version, `~` matches major and minor
//! (<https://flagd.dev/reference/custom-operations/semver-operation/>).

use std::cmp::Ordering;

/// A parsed version borrowing from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    /// Without the leading `-`; empty when there is none.
    prerelease: &'a str,
}

/// A `sem_ver` comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `^`: same major version.
    Major,
    /// `~`: same major and minor version.
    Minor,
}

impl Operator {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "=" => Self::Eq,
            "!=" => Self::Ne,
            "<" => Self::Lt,
            "<=" => Self::Le,
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "^" => Self::Major,
            "~" => Self::Minor,
            _ => return None,
        })
    }

    pub(crate) fn holds(self, a: &Version<'_>, b: &Version<'_>) -> bool {
        match self {
            Self::Eq => compare(a, b) == Ordering::Equal,
            Self::Ne => compare(a, b) != Ordering::Equal,
            Self::Lt => compare(a, b) == Ordering::Less,
            Self::Le => compare(a, b) != Ordering::Greater,
            Self::Gt => compare(a, b) == Ordering::Greater,
            Self::Ge => compare(a, b) != Ordering::Less,
            Self::Major => cmp_num(a.major, b.major) == Ordering::Equal,
            Self::Minor => {
                cmp_num(a.major, b.major) == Ordering::Equal
                    && cmp_num(a.minor, b.minor) == Ordering::Equal
            }
        }
    }
}

/// Parses a version as flagd does: an optional leading `v` (or `V`), then Go's semver grammar.
pub(crate) fn parse_lenient(text: &str) -> Option<Version<'_>> {
    let rest = text
        .strip_prefix('v')
        .or_else(|| text.strip_prefix('V'))
        .unwrap_or(text);
    parse(rest)
}

fn parse(v: &str) -> Option<Version<'_>> {
    let (major, v) = parse_int(v)?;
    if v.is_empty() {
        return Some(Version {
            major,
            minor: "0",
            patch: "0",
            prerelease: "",
        });
    }
    let v = v.strip_prefix('.')?;
    let (minor, v) = parse_int(v)?;
    if v.is_empty() {
        return Some(Version {
            major,
            minor,
            patch: "0",
            prerelease: "",
        });
    }
    let v = v.strip_prefix('.')?;
    let (patch, mut v) = parse_int(v)?;
    let mut prerelease = "";
    if let Some(rest) = v.strip_prefix('-') {
        let end = rest.find('+').unwrap_or(rest.len());
        prerelease = &rest[..end];
        if !valid_identifiers(prerelease, true) {
            return None;
        }
        v = &rest[end..];
    }
    if let Some(build) = v.strip_prefix('+') {
        if !valid_identifiers(build, false) {
            return None;
        }
        v = "";
    }
    if !v.is_empty() {
        return None;
    }
    Some(Version {
        major,
        minor,
        patch,
        prerelease,
    })
}

fn parse_int(v: &str) -> Option<(&str, &str)> {
    let end = v
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    if end == 0 || (end > 1 && v.as_bytes()[0] == b'0') {
        return None;
    }
    Some((&v[..end], &v[end..]))
}

fn valid_identifiers(s: &str, no_leading_zero_numbers: bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !(no_leading_zero_numbers && is_num(id) && id.len() > 1 && id.starts_with('0'))
    })
}

fn is_num(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Compares digit strings without leading zeros, of any length.
fn cmp_num(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

pub(crate) fn compare(a: &Version<'_>, b: &Version<'_>) -> Ordering {
    cmp_num(a.major, b.major)
        .then_with(|| cmp_num(a.minor, b.minor))
        .then_with(|| cmp_num(a.patch, b.patch))
        .then_with(|| cmp_prerelease(a.prerelease, b.prerelease))
}

fn cmp_prerelease(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (is_num(x), is_num(y)) {
                    (true, true) => cmp_num(x, y),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(a: &str, op: &str, b: &str) -> bool {
        let (Some(a), Some(b), Some(op)) =
            (parse_lenient(a), parse_lenient(b), Operator::parse(op))
        else {
            panic!("bad test input {a} {op} {b}");
        };
        op.holds(&a, &b)
    }

    #[test]
    fn grammar_follows_go_semver() {
        for ok in [
            "1.2.3",
            "v1.2.3",
            "V1.2.3",
            "1",
            "1.2",
            "0.0.0",
            "1.2.3-rc.1",
            "1.2.3-rc.1+b.01",
            "1.2.3+x",
            "10.20.30-0a",
        ] {
            assert!(parse_lenient(ok).is_some(), "{ok} should parse");
        }
        for bad in [
            "",
            "v",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2-rc",
            "1-rc",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3-a..b",
            "vv1.2.3",
            "1.2.3 ",
            "x",
        ] {
            assert!(parse_lenient(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn comparisons() {
        assert!(holds("1.2.3", "=", "1.2.3+build"));
        assert!(holds("1.2", "=", "1.2.0"));
        assert!(holds("1.10.0", ">", "1.9.9"));
        assert!(holds("1.0.0-alpha", "<", "1.0.0"));
        assert!(holds("1.0.0-alpha", "<", "1.0.0-alpha.1"));
        assert!(holds("1.0.0-alpha.1", "<", "1.0.0-alpha.beta"));
        assert!(holds("1.0.0-beta.2", "<", "1.0.0-beta.11"));
        assert!(holds("1.0.0-rc.1", ">=", "1.0.0-beta.11"));
        assert!(holds("1.5.0", "^", "1.0.0"));
        assert!(!holds("2.0.0", "^", "1.9.0"));
        assert!(holds("1.2.9", "~", "1.2.0"));
        assert!(!holds("1.3.0", "~", "1.2.0"));
        assert!(holds("1.2.3", "!=", "1.2.4"));
        assert!(holds(
            "99999999999999999999.0.0",
            ">",
            "9999999999999999999.0.0"
        ));
    }
}
