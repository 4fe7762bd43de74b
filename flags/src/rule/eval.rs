//! Evaluation of a compiled [`Node`] tree.
//!
//! Operators follow the JsonLogic reference (json-logic-js) as flagd documents it; flagd's own
//! operators follow its daemon. Like JsonLogic, evaluation never fails: invalid input to an
//! operator yields `null` ("flagd's custom operations return null on invalid or unexpected
//! inputs", <https://flagd.dev/reference/flag-definitions/#custom-operations>).

use super::value::{write_js_number, Val};
use super::{Fractional, Node, PathPart, VarPath, Weight};
use crate::bucketing::{v3_pair_hash, v3_text_hash, Cbor, FractionalAlgorithm};
use crate::limits::Budget;
use crate::murmur3::murmur3_x86_32;
use crate::semver;
use serde_json::{Map, Value};

/// What a rule is evaluated against.
pub(crate) struct Env<'a> {
    /// The evaluation context; `targetingKey` is one of its entries, as in flagd.
    pub(crate) data: &'a Map<String, Value>,
    pub(crate) flag_key: &'a str,
    /// Unix seconds, for `$flagd.timestamp`.
    pub(crate) timestamp: i64,
    /// What the evaluation may still spend; see `crate::limits`.
    pub(crate) budget: Budget,
    /// How `fractional` hashes: the evaluated flag's `fractionalAlgorithm`.
    pub(crate) fractional: FractionalAlgorithm,
}

impl<'a> Env<'a> {
    pub(crate) fn new(data: &'a Map<String, Value>, flag_key: &'a str, timestamp: i64) -> Self {
        Self {
            data,
            flag_key,
            timestamp,
            budget: Budget::new(),
            fractional: FractionalAlgorithm::V2,
        }
    }
}

/// The data `var` reads: the context, or an element inside `map`/`filter`/`all`/`some`/`none`,
/// or `{current, accumulator}` inside `reduce`.
#[derive(Clone, Copy)]
enum Data<'a, 'd> {
    Root,
    Item(&'d Val<'a>),
    Reduce {
        current: &'d Val<'a>,
        accumulator: &'d Val<'a>,
    },
}

/// What targeting returned: a constant variant name resolved to the variant's index when the
/// rule was compiled, or a computed value whose name the flag still has to look up.
pub(crate) enum Outcome<'a> {
    Variant(usize, &'a str),
    Value(Val<'a>),
}

impl<'a> Outcome<'a> {
    pub(crate) fn into_val(self) -> Val<'a> {
        match self {
            Outcome::Variant(_, name) => Val::Str(name),
            Outcome::Value(v) => v,
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Outcome::Variant(_, name) => !name.is_empty(),
            Outcome::Value(v) => v.truthy(),
        }
    }
}

/// Evaluates a rule that reads nothing from the context (see `Compiler::prove_bounded`).
pub(crate) fn eval_constant<'a>(node: &'a Node, env: &Env<'a>) {
    eval(node, env, Data::Root);
}

/// Evaluates a flag's targeting. The flag tells whether the result came out of a `fractional`
/// split (reason `SPLIT`) rather than a plain rule.
pub(crate) fn eval_targeting<'a>(node: &'a Node, env: &Env<'a>) -> (Outcome<'a>, bool) {
    eval_result(node, env, Data::Root)
}

fn eval_result<'a>(node: &'a Node, env: &Env<'a>, data: Data<'a, '_>) -> (Outcome<'a>, bool) {
    if !env.budget.step() {
        return (Outcome::Value(Val::Null), false);
    }
    match node {
        Node::Variant { index, name } => (Outcome::Variant(*index, name), false),
        Node::If(args) => {
            let n = args.len();
            let mut i = 0;
            while i + 1 < n {
                if truthy(&args[i], env, data) {
                    return eval_result(&args[i + 1], env, data);
                }
                i += 2;
            }
            if i + 1 == n {
                eval_result(&args[i], env, data)
            } else {
                (Outcome::Value(Val::Null), false)
            }
        }
        Node::Or(args) | Node::And(args) => {
            let want = matches!(node, Node::Or(_));
            let mut last = (Outcome::Value(Val::Null), false);
            for a in args.iter() {
                last = eval_result(a, env, data);
                if last.0.truthy() == want {
                    return last;
                }
            }
            last
        }
        Node::Fractional(f) => fractional(f, env, data),
        other => (Outcome::Value(eval(other, env, data)), false),
    }
}

/// The truthiness of a condition. Operators whose result is a boolean answer here without
/// building a value, and string operands that are constants or context attributes are
/// borrowed, so the usual conditions (`in` a list, `ends_with`, `==` a string) never build a
/// `Val`. Anything else is evaluated and then tested, with identical meaning.
fn truthy<'a>(node: &'a Node, env: &Env<'a>, data: Data<'a, '_>) -> bool {
    if !env.budget.step() {
        return false;
    }
    match node {
        Node::Bool(b) => *b,
        // `and` returns its first falsy operand or its last: truthy exactly when all are.
        Node::And(args) => args.iter().all(|a| truthy(a, env, data)),
        // `or` returns its first truthy operand or its last: truthy exactly when one is.
        Node::Or(args) => args.iter().any(|a| truthy(a, env, data)),
        Node::Not(a) => !truthy(a, env, data),
        Node::Truthy(a) => truthy(a, env, data),
        Node::InStrings(needle, set) => match borrowed_str(needle, env, data) {
            Some(s) => s.is_some_and(|s| in_set(s, set, env)),
            None => in_strings(&eval(needle, env, data), set, env),
        },
        Node::StartsWith(ab) | Node::EndsWith(ab) => {
            let starts = matches!(node, Node::StartsWith(_));
            match (
                borrowed_str(&ab[0], env, data),
                borrowed_str(&ab[1], env, data),
            ) {
                (Some(a), Some(b)) => match (a, b) {
                    (Some(a), Some(b)) => affix(starts, a, b, env),
                    _ => false,
                },
                _ => eval(node, env, data).truthy(),
            }
        }
        Node::Ref(rule) => truthy(rule, env, Data::Root),
        other => eval(other, env, data).truthy(),
    }
}

/// A string operand without evaluating it into a `Val`: `Some(Some(s))` for a string constant
/// or a root-scope attribute holding a string, `Some(None)` for a root-scope attribute that is
/// absent or not a string (a `var` without default), `None` when it must be evaluated.
#[inline]
fn borrowed_str<'a>(node: &'a Node, env: &Env<'a>, data: Data<'a, '_>) -> Option<Option<&'a str>> {
    match (node, data) {
        (Node::Str(s), _) => Some(Some(s)),
        (
            Node::Var {
                path,
                default: None,
            },
            Data::Root,
        ) => match &*path.parts {
            [one] => Some(attribute(env.data, &one.key).and_then(Value::as_str)),
            _ => None,
        },
        _ => None,
    }
}

/// Looks up a top-level context attribute. Contexts are small (a handful of attributes), and
/// for those a scan that compares lengths before bytes beats the map's ordered search, which
/// compares bytes with every key it passes.
#[inline]
fn attribute<'a>(data: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if data.len() <= SCAN_ATTRIBUTES {
        data.iter()
            .find(|(k, _)| k.len() == key.len() && k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v)
    } else {
        data.get(key)
    }
}

const SCAN_ATTRIBUTES: usize = 16;

fn affix(starts: bool, a: &str, b: &str, env: &Env<'_>) -> bool {
    env.budget.scan(b.len());
    if starts {
        a.starts_with(b)
    } else {
        a.ends_with(b)
    }
}

fn in_strings(needle: &Val<'_>, set: &[Box<str>], env: &Env<'_>) -> bool {
    match needle.as_str() {
        Some(s) => in_set(s, set, env),
        None => false,
    }
}

/// Whether `s` is one of a constant list's strings: a step per 16 entries compared.
#[inline]
fn in_set(s: &str, set: &[Box<str>], env: &Env<'_>) -> bool {
    env.budget.work(1 + (set.len() as u64 >> 4)) && set.iter().any(|x| x.as_ref() == s)
}

fn eval<'a>(node: &'a Node, env: &Env<'a>, data: Data<'a, '_>) -> Val<'a> {
    // The common operators stay in this small function; the rest live in `eval_other`, so
    // the recursive hot path keeps a small stack frame.
    if !env.budget.step() {
        return Val::Null;
    }
    let b = &env.budget;
    match node {
        Node::Null => Val::Null,
        Node::Bool(v) => Val::Bool(*v),
        Node::Num(n) => Val::Num(*n),
        Node::Str(s) | Node::Variant { name: s, .. } => Val::Str(s),
        Node::Json(v) => Val::from_json(v),
        Node::Var { path, default } => match lookup(env, data, path.parts.iter().map(part)) {
            Some(v) => v,
            None => default.as_ref().map_or(Val::Null, |d| eval(d, env, data)),
        },
        Node::If(_) | Node::Or(_) | Node::And(_) | Node::Fractional(_) => {
            eval_result(node, env, data).0.into_val()
        }
        Node::Eq(ab) => Val::Bool(eval(&ab[0], env, data).loose_eq(&eval(&ab[1], env, data), b)),
        Node::StrictEq(ab) => {
            Val::Bool(eval(&ab[0], env, data).strict_eq(&eval(&ab[1], env, data), b))
        }
        Node::Not(a) => Val::Bool(!truthy(a, env, data)),
        Node::InStrings(..) => Val::Bool(truthy(node, env, data)),
        Node::StartsWith(ab) | Node::EndsWith(ab) => {
            let x = eval(&ab[0], env, data);
            let y = eval(&ab[1], env, data);
            match (x.as_str(), y.as_str()) {
                (Some(x), Some(y)) => {
                    Val::Bool(affix(matches!(node, Node::StartsWith(_)), x, y, env))
                }
                _ => Val::Null,
            }
        }
        Node::Ref(rule) => eval(rule, env, Data::Root),
        other => eval_other(other, env, data),
    }
}

#[inline(never)]
fn eval_other<'a>(node: &'a Node, env: &Env<'a>, data: Data<'a, '_>) -> Val<'a> {
    let b = &env.budget;
    match node {
        Node::Null => Val::Null,
        Node::Bool(v) => Val::Bool(*v),
        Node::Num(n) => Val::Num(*n),
        Node::Str(s) | Node::Variant { name: s, .. } => Val::Str(s),
        Node::Json(v) => Val::from_json(v),
        Node::Array(items) => Val::list(items.iter().map(|n| eval(n, env, data)).collect(), b),
        Node::Var { path, default } => match lookup(env, data, path.parts.iter().map(part)) {
            Some(v) => v,
            None => default.as_ref().map_or(Val::Null, |d| eval(d, env, data)),
        },
        Node::VarDyn { path, default } => {
            let p = eval(path, env, data);
            let found = match &p {
                Val::Null => lookup(env, data, std::iter::empty()),
                Val::Num(_) => {
                    let text = p.to_js_string(b);
                    lookup(env, data, split(&text, b))
                }
                other => match other.as_str() {
                    Some(text) => lookup(env, data, split(text, b)),
                    None => None,
                },
            };
            match found {
                Some(v) => v,
                None => default.as_ref().map_or(Val::Null, |d| eval(d, env, data)),
            }
        }
        Node::FlagKey => Val::Str(env.flag_key),
        Node::Timestamp => Val::Num(env.timestamp as f64),
        Node::Missing(args) => missing(args, env, data),
        Node::MissingSome(need, keys) => {
            let need = eval(need, env, data).to_number(b);
            let keys = eval(keys, env, data);
            let total = keys.array_len().unwrap_or(0);
            let absent = missing_keys(&keys, env, data);
            if (total - absent.len()) as f64 >= need {
                Val::empty_list()
            } else {
                Val::list(absent, b)
            }
        }
        Node::If(_) | Node::Or(_) | Node::And(_) | Node::Fractional(_) => {
            eval_result(node, env, data).0.into_val()
        }
        Node::Eq(ab) => Val::Bool(eval(&ab[0], env, data).loose_eq(&eval(&ab[1], env, data), b)),
        Node::Ne(ab) => Val::Bool(!eval(&ab[0], env, data).loose_eq(&eval(&ab[1], env, data), b)),
        Node::StrictEq(ab) => {
            Val::Bool(eval(&ab[0], env, data).strict_eq(&eval(&ab[1], env, data), b))
        }
        Node::StrictNe(ab) => {
            Val::Bool(!eval(&ab[0], env, data).strict_eq(&eval(&ab[1], env, data), b))
        }
        Node::Not(a) => Val::Bool(!eval(a, env, data).truthy()),
        Node::Truthy(a) => Val::Bool(eval(a, env, data).truthy()),
        Node::Less(args) | Node::LessEq(args) => {
            let strict = matches!(node, Node::Less(_));
            let holds = |o: Option<std::cmp::Ordering>| match o {
                Some(std::cmp::Ordering::Less) => true,
                Some(std::cmp::Ordering::Equal) => !strict,
                _ => false,
            };
            let x = eval(&args[0], env, data);
            let y = eval(&args[1], env, data);
            let first = holds(x.js_cmp(&y, b));
            match args.get(2) {
                None => Val::Bool(first),
                Some(c) => {
                    let z = eval(c, env, data);
                    Val::Bool(first && holds(y.js_cmp(&z, b)))
                }
            }
        }
        Node::Greater(ab) => {
            let o = eval(&ab[0], env, data).js_cmp(&eval(&ab[1], env, data), b);
            Val::Bool(o == Some(std::cmp::Ordering::Greater))
        }
        Node::GreaterEq(ab) => {
            let o = eval(&ab[0], env, data).js_cmp(&eval(&ab[1], env, data), b);
            Val::Bool(matches!(
                o,
                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
            ))
        }
        Node::In(ab) => {
            let needle = eval(&ab[0], env, data);
            let hay = eval(&ab[1], env, data);
            Val::Bool(contains(&hay, &needle, b))
        }
        Node::InStrings(needle, set) => Val::Bool(in_strings(&eval(needle, env, data), set, env)),
        Node::Cat(args) => {
            let mut out = String::new();
            for a in args {
                if !eval(a, env, data).write_js(&mut out, true, b) {
                    return Val::Null;
                }
            }
            // The bytes were charged as they were written.
            Val::String(out.into())
        }
        Node::Substr(args) => substr(args, env, data),
        Node::Add(args) => Val::Num(args.iter().map(|a| eval(a, env, data).parse_float(b)).sum()),
        Node::Mul(args) => Val::Num(
            args.iter()
                .map(|a| eval(a, env, data).parse_float(b))
                .product(),
        ),
        Node::Sub(args) => {
            let x = eval(&args[0], env, data).to_number(b);
            match args.get(1) {
                None => Val::Num(-x),
                Some(y) => Val::Num(x - eval(y, env, data).to_number(b)),
            }
        }
        Node::Div(ab) => {
            Val::Num(eval(&ab[0], env, data).to_number(b) / eval(&ab[1], env, data).to_number(b))
        }
        Node::Mod(ab) => {
            Val::Num(eval(&ab[0], env, data).to_number(b) % eval(&ab[1], env, data).to_number(b))
        }
        Node::Min(args) | Node::Max(args) => {
            let is_min = matches!(node, Node::Min(_));
            let mut acc = if is_min {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            for a in args {
                let x = eval(a, env, data).to_number(b);
                if x.is_nan() {
                    return Val::Num(f64::NAN);
                }
                acc = if is_min { acc.min(x) } else { acc.max(x) };
            }
            Val::Num(acc)
        }
        Node::Merge(args) => {
            let mut out = Vec::new();
            for a in args {
                let v = eval(a, env, data);
                match v.array_len() {
                    Some(n) => {
                        if !b.work(n as u64) {
                            return Val::Null;
                        }
                        out.extend((0..n).filter_map(|i| v.element(i)));
                    }
                    None => out.push(v),
                }
            }
            Val::list(out, b)
        }
        Node::Map(pair) => {
            let list = eval(&pair[0], env, data);
            let n = list.array_len().unwrap_or(0);
            let mut out = Vec::new();
            for item in (0..n).filter_map(|i| list.element(i)) {
                if !b.ok() {
                    return Val::Null;
                }
                out.push(eval(&pair[1], env, Data::Item(&item)));
            }
            Val::list(out, b)
        }
        Node::Filter(pair) => {
            let list = eval(&pair[0], env, data);
            let n = list.array_len().unwrap_or(0);
            let mut out = Vec::new();
            for item in (0..n).filter_map(|i| list.element(i)) {
                if !b.ok() {
                    return Val::Null;
                }
                if eval(&pair[1], env, Data::Item(&item)).truthy() {
                    out.push(item);
                }
            }
            Val::list(out, b)
        }
        Node::All(pair) | Node::Some(pair) | Node::None(pair) => {
            let list = eval(&pair[0], env, data);
            let n = list.array_len().unwrap_or(0);
            let mut any_true = false;
            let mut all_true = true;
            for item in (0..n).filter_map(|i| list.element(i)) {
                if !b.ok() {
                    return Val::Null;
                }
                if eval(&pair[1], env, Data::Item(&item)).truthy() {
                    any_true = true;
                } else {
                    all_true = false;
                }
            }
            Val::Bool(match node {
                // JsonLogic: `all` of an empty (or non-) array is false.
                Node::All(_) => n > 0 && all_true,
                Node::Some(_) => any_true,
                _ => !any_true,
            })
        }
        Node::Reduce(args) => {
            let list = eval(&args[0], env, data);
            let mut acc = eval(&args[2], env, data);
            let n = list.array_len().unwrap_or(0);
            for item in (0..n).filter_map(|i| list.element(i)) {
                if !b.ok() {
                    return Val::Null;
                }
                acc = eval(
                    &args[1],
                    env,
                    Data::Reduce {
                        current: &item,
                        accumulator: &acc,
                    },
                );
            }
            acc
        }
        Node::StartsWith(ab) | Node::EndsWith(ab) => {
            let x = eval(&ab[0], env, data);
            let y = eval(&ab[1], env, data);
            match (x.as_str(), y.as_str()) {
                (Some(x), Some(y)) => {
                    Val::Bool(affix(matches!(node, Node::StartsWith(_)), x, y, env))
                }
                _ => Val::Null,
            }
        }
        Node::SemVer(args) => sem_ver(args, env, data),
        Node::Ref(rule) => eval(rule, env, Data::Root),
    }
}

fn part(p: &PathPart) -> (&str, Option<usize>) {
    (&p.key, p.index)
}

/// A computed `var` path split at dots, its scan charged to `b`.
fn split<'t>(text: &'t str, b: &Budget) -> impl Iterator<Item = (&'t str, Option<usize>)> {
    let parts = if text.is_empty() || !b.scan(text.len()) {
        None
    } else {
        Some(text.split('.'))
    };
    parts
        .into_iter()
        .flatten()
        .map(|k| (k, k.parse::<usize>().ok()))
}

/// JsonLogic `var`: `None` when a step is missing (the default applies); a final `null` is
/// returned as found.
fn lookup<'a, 'k>(
    env: &Env<'a>,
    data: Data<'a, '_>,
    mut parts: impl Iterator<Item = (&'k str, Option<usize>)>,
) -> Option<Val<'a>> {
    let Some((key, index)) = parts.next() else {
        return Some(match data {
            Data::Root => Val::Obj(env.data),
            Data::Item(v) => v.clone(),
            Data::Reduce { .. } => Val::Null,
        });
    };
    let mut cur = match data {
        Data::Root => Val::from_json(attribute(env.data, key)?),
        Data::Item(v) => v.get(key, index)?,
        Data::Reduce {
            current,
            accumulator,
        } => match key {
            "current" => current.clone(),
            "accumulator" => accumulator.clone(),
            _ => return None,
        },
    };
    for (key, index) in parts {
        cur = cur.get(key, index)?;
    }
    Some(cur)
}

fn missing<'a>(args: &'a [Node], env: &Env<'a>, data: Data<'a, '_>) -> Val<'a> {
    // json-logic-js: when the first argument is an array, it is the list of keys.
    let b = &env.budget;
    let first = args.first().map(|a| eval(a, env, data));
    if let Some(f) = &first {
        if f.array_len().is_some() {
            return Val::list(missing_keys(f, env, data), b);
        }
    }
    let keys: Vec<Val<'a>> = first
        .into_iter()
        .chain(args.iter().skip(1).map(|a| eval(a, env, data)))
        .collect();
    Val::list(missing_keys(&Val::list(keys, b), env, data), b)
}

fn missing_keys<'a>(keys: &Val<'a>, env: &Env<'a>, data: Data<'a, '_>) -> Vec<Val<'a>> {
    let b = &env.budget;
    let n = keys.array_len().unwrap_or(0);
    let mut out = Vec::new();
    for key in (0..n).filter_map(|i| keys.element(i)) {
        if !b.step() {
            break;
        }
        let text = match key.as_str() {
            Some(s) => s.to_string(),
            None => key.to_js_string(b),
        };
        let absent = match lookup(env, data, split(&text, b)) {
            None | Some(Val::Null) => true,
            Some(v) => v.as_str() == Some(""),
        };
        if absent {
            out.push(key);
        }
    }
    out
}

fn contains(hay: &Val<'_>, needle: &Val<'_>, b: &Budget) -> bool {
    if let Some(h) = hay.as_str() {
        if !b.scan(h.len()) {
            return false;
        }
        return match needle.as_str() {
            Some(n) => h.contains(n),
            None => h.contains(needle.to_js_string(b).as_str()),
        };
    }
    match hay.array_len() {
        Some(n) => (0..n)
            .filter_map(|i| hay.element(i))
            .any(|x| x.strict_eq(needle, b)),
        None => false,
    }
}

/// json-logic-js `substr(source, start, end)`: JavaScript `String.prototype.substr`, with a
/// negative `end` dropping that many characters from the end. Counts Unicode scalar values.
fn substr<'a>(args: &'a [Node], env: &Env<'a>, data: Data<'a, '_>) -> Val<'a> {
    let b = &env.budget;
    let source = eval(&args[0], env, data).to_js_string(b);
    if !b.alloc(source.len() as u64 * 4) {
        return Val::Null;
    }
    let chars: Vec<char> = source.chars().collect();
    let len = chars.len() as f64;
    let to_int = |x: f64| if x.is_nan() { 0.0 } else { x.trunc() };
    let start = to_int(eval(&args[1], env, data).to_number(b));
    let start = if start < 0.0 {
        (len + start).max(0.0)
    } else {
        start.min(len)
    } as usize;
    let end = match args.get(2) {
        None => chars.len(),
        Some(e) => {
            let e = to_int(eval(e, env, data).to_number(b));
            let rest = (chars.len() - start) as f64;
            let take = if e < 0.0 {
                (rest + e).max(0.0)
            } else {
                e.min(rest)
            };
            start + take as usize
        }
    };
    Val::string(chars[start..end].iter().collect(), b)
}

/// flagd `sem_ver`: `[version, operator, version]`, `null` when any part is invalid.
fn sem_ver<'a>(args: &'a [Node; 3], env: &Env<'a>, data: Data<'a, '_>) -> Val<'a> {
    let x = eval(&args[0], env, data);
    let op = eval(&args[1], env, data);
    let y = eval(&args[2], env, data);
    let (mut xbuf, mut ybuf) = (String::new(), String::new());
    let (Some(x), Some(y)) = (version_text(&x, &mut xbuf), version_text(&y, &mut ybuf)) else {
        return Val::Null;
    };
    if !env.budget.scan(x.len() + y.len()) {
        return Val::Null;
    }
    let Some(op) = op.as_str().and_then(semver::Operator::parse) else {
        return Val::Null;
    };
    match (semver::parse_lenient(x), semver::parse_lenient(y)) {
        (Some(x), Some(y)) => Val::Bool(op.holds(&x, &y)),
        _ => Val::Null,
    }
}

/// flagd formats a non-string version with Go's `%v`: numbers as their shortest text.
fn version_text<'v>(v: &'v Val<'_>, buf: &'v mut String) -> Option<&'v str> {
    match v {
        Val::Num(n) => {
            write_js_number(*n, buf);
            Some(buf.as_str())
        }
        other => other.as_str(),
    }
}

/// flagd `fractional`, as its daemon implements it
/// (<https://flagd.dev/reference/custom-operations/fractional-operation/>):
/// `h = murmur3_x86_32(bucketing string, seed 0)`, `b = (h * total_weight) >> 32`, and the
/// variant is the first whose cumulative weight exceeds `b`. The bucketing string is the value
/// of the bucketing expression when it yields a string, else `$flagd.flagKey` + `targetingKey`;
/// without a non-empty string targeting key the result is `null` (the default variant).
/// Weights: missing or null means 1; negative computed weights count as 0; a non-integer,
/// non-number or too large weight, or a total of 0, makes the result `null`.
#[inline(never)]
fn fractional<'a>(f: &'a Fractional, env: &Env<'a>, data: Data<'a, '_>) -> (Outcome<'a>, bool) {
    let hash = match env.fractional {
        FractionalAlgorithm::V2 => v2_hash(f, env, data),
        FractionalAlgorithm::V3 => v3_hash(f, env, data),
    };
    let Some(hash) = hash else {
        return (Outcome::Value(Val::Null), false);
    };
    let total = match f.const_total {
        Some(t) => t,
        None => {
            let mut t: u64 = 0;
            for b in &f.buckets {
                match weight(&b.weight, env, data) {
                    Some(w) => t += w,
                    None => return (Outcome::Value(Val::Null), false),
                }
            }
            t
        }
    };
    if total == 0 || total > i32::MAX as u64 {
        return (Outcome::Value(Val::Null), false);
    }
    let point = (u64::from(hash) * total) >> 32;
    let mut end: u64 = 0;
    for b in &f.buckets {
        end += weight(&b.weight, env, data).unwrap_or(0);
        if point < end {
            return match eval_result(&b.variant, env, data).0 {
                o @ Outcome::Variant(..) => (o, true),
                Outcome::Value(v @ (Val::Str(_) | Val::String(_) | Val::Bool(_) | Val::Num(_))) => {
                    (Outcome::Value(v), true)
                }
                Outcome::Value(_) => (Outcome::Value(Val::Null), false),
            };
        }
    }
    (Outcome::Value(Val::Null), false)
}

/// flagd's v2 input: a string bucketing value's bytes; with none (or a value that is not a
/// string), the flag key followed by a non-empty string `targetingKey`.
fn v2_hash<'a>(f: &'a Fractional, env: &Env<'a>, data: Data<'a, '_>) -> Option<u32> {
    if let Some(v) = f.bucket_by.as_ref().map(|b| eval(b, env, data)) {
        if let Some(text) = v.as_str() {
            env.budget.scan(text.len());
            return Some(murmur3_x86_32(&[text.as_bytes()], 0));
        }
    }
    match attribute(env.data, "targetingKey") {
        Some(Value::String(tk)) if !tk.is_empty() => {
            env.budget.scan(tk.len());
            Some(murmur3_x86_32(&[env.flag_key.as_bytes(), tk.as_bytes()], 0))
        }
        _ => None,
    }
}

/// flagd's v3 input: the canonical CBOR of the bucketing value, whatever its type (`null`, a
/// missing attribute, answers no variant); with none, of `[flagKey, targetingKey]` for a
/// non-empty string `targetingKey`. A bucketing value that is an array answers no variant
/// (flagd-core would read it as one more distribution).
fn v3_hash<'a>(f: &'a Fractional, env: &Env<'a>, data: Data<'a, '_>) -> Option<u32> {
    let Some(b) = &f.bucket_by else {
        return match attribute(env.data, "targetingKey") {
            Some(Value::String(tk)) if !tk.is_empty() => {
                env.budget.scan(tk.len() + env.flag_key.len());
                Some(v3_pair_hash(env.flag_key, tk))
            }
            _ => None,
        };
    };
    let mut cbor = Cbor::default();
    // A context attribute is encoded from its JSON, so integers beyond 2^53 keep every digit
    // (evaluation reads numbers as f64).
    if let (Node::Var { path, .. }, Data::Root) = (b, data) {
        if let Some(raw @ (Value::Number(_) | Value::Object(_))) = context_json(env, path) {
            cbor.json(raw);
            env.budget.scan(cbor.out.len());
            return Some(murmur3_x86_32(&[&cbor.out], 0));
        }
    }
    match eval(b, env, data) {
        Val::Str(text) => return Some(v3_text(text, env)),
        Val::String(text) => return Some(v3_text(&text, env)),
        Val::Null | Val::Arr(_) | Val::List(_) => return None,
        Val::Bool(b) => cbor.bool(b),
        Val::Num(x) => cbor.number(x),
        Val::Obj(map) => cbor.map(map),
    }
    env.budget.scan(cbor.out.len());
    Some(murmur3_x86_32(&[&cbor.out], 0))
}

/// The context's JSON at a `var` path, when it is there.
fn context_json<'a>(env: &Env<'a>, path: &VarPath) -> Option<&'a Value> {
    let (first, rest) = path.parts.split_first()?;
    let mut cur = attribute(env.data, &first.key)?;
    for p in rest {
        cur = match cur {
            Value::Object(m) => m.get(&*p.key)?,
            Value::Array(a) => a.get(p.index?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn v3_text(text: &str, env: &Env<'_>) -> u32 {
    env.budget.scan(text.len());
    v3_text_hash(text)
}

fn weight<'a>(w: &'a Weight, env: &Env<'a>, data: Data<'a, '_>) -> Option<u64> {
    match w {
        Weight::Const(c) => Some(u64::from(*c)),
        Weight::Expr(e) => match eval(e, env, data) {
            Val::Null => Some(1),
            Val::Num(n) if n.is_finite() && n.fract() == 0.0 && n <= f64::from(i32::MAX) => {
                Some(if n < 0.0 { 0 } else { n as u64 })
            }
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::compile::{Compiler, RefLookup};
    use serde_json::json;

    /// `truthy` answers conditions without building values; it must agree with evaluating and
    /// then testing, for every operator case in the table and with the operators that pass
    /// conditions through (`and`, `or`, `!`, `!!`).
    #[test]
    fn condition_fast_path_agrees_with_evaluation() {
        let table: Value = serde_json::from_str(include_str!("../../tests/cases/operators.json"))
            .expect("operators.json is valid JSON");
        let cases = table["cases"].as_array().expect("cases array");
        let resolve = |_: &str| RefLookup::Missing;
        let mut checked = 0;
        for case in cases {
            let (name, rule, data) = (&case[0], &case[1], &case[2]);
            let Some(data) = data.as_object() else {
                continue;
            };
            let env = Env::new(data, "flag-key", 1_700_000_000);
            for wrapped in [
                rule.clone(),
                json!({"and": [true, rule]}),
                json!({"or": [false, rule]}),
                json!({"!": [rule]}),
                json!({"!!": [rule]}),
            ] {
                let mut compiler = Compiler::new(&resolve, None);
                let node = compiler.compile_root(&wrapped, false);
                if !compiler.faults.list.is_empty() {
                    continue;
                }
                assert_eq!(
                    truthy(&node, &env, Data::Root),
                    eval(&node, &env, Data::Root).truthy(),
                    "{name}: {wrapped}"
                );
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} rules checked");
    }
}
