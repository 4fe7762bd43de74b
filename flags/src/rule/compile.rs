//! JSON → [`Node`] compilation. The same pass validates: every structural fault is recorded
//! with its JSON path, so validation and evaluation can never disagree about what a rule means.
//!
//! Operators, arities and argument shapes follow flagd's targeting schema
//! (<https://flagd.dev/schema/v0/targeting.json>) and the JsonLogic operations flagd documents
//! (<https://flagd.dev/reference/flag-definitions/#targeting-rules>).

use super::eval::{eval_constant, Env};
use super::{Bucket, Fractional, Node, PathPart, VarPath, Weight};
use crate::fault::Faults;
use crate::limits::{EVAL_MAX_STEPS, MAX_RULE_DEPTH};
use crate::semver;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a `$ref` resolves to while compiling.
pub(crate) enum RefLookup {
    /// The segment's compiled rule.
    Found(Arc<Node>),
    /// No such segment: a fault.
    Missing,
    /// References are not resolved in this pass (structure-only validation).
    Unchecked,
    /// The segment exists but could not be compiled (it has faults of its own or is in a cycle).
    Broken(String),
}

/// The variant names of the flag being compiled, for checking constants the targeting can return.
pub(crate) struct VariantNames<'a> {
    pub(crate) names: &'a BTreeSet<String>,
}

/// How strictly a position's constants are checked against variant names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    /// A condition or an operand: any constant is fine.
    Operand,
    /// The value of this expression is the targeting result: constants must name variants.
    Result,
    /// An `and`/`or` operand in a result position: it is returned when it decides the outcome,
    /// but booleans there are conditions, so only strings are checked.
    WeakResult,
}

pub(crate) struct Compiler<'r> {
    pub(crate) faults: Faults,
    resolve: &'r dyn Fn(&str) -> RefLookup,
    variants: Option<VariantNames<'r>>,
    /// Reads of the evaluation context (or of anything else an evaluation is given: the flag
    /// key, the time, a segment) compiled so far.
    root_reads: usize,
    /// Reads of a `map`/`filter`/`reduce` item compiled so far, outside the operation that
    /// binds them.
    item_reads: usize,
    /// Steps left for evaluating constant sub-rules while compiling (see `prove_bounded`).
    proof_steps: u64,
}

const MAX_DEPTH: usize = MAX_RULE_DEPTH;

impl<'r> Compiler<'r> {
    pub(crate) fn new(
        resolve: &'r dyn Fn(&str) -> RefLookup,
        variants: Option<VariantNames<'r>>,
    ) -> Self {
        Self {
            faults: Faults::new(),
            resolve,
            variants,
            root_reads: 0,
            item_reads: 0,
            proof_steps: 4 * EVAL_MAX_STEPS,
        }
    }

    /// Compiles a flag's `targeting` (the value is the targeting result) or a segment's rule.
    pub(crate) fn compile_root(&mut self, rule: &Value, is_targeting: bool) -> Node {
        let pos = if is_targeting && self.variants.is_some() {
            Position::Result
        } else {
            Position::Operand
        };
        self.node(rule, Scope::Root, pos, 0)
    }

    fn check_result_constant(&mut self, value: &Value, pos: Position) {
        let Some(variants) = &self.variants else {
            return;
        };
        let names = variants.names;
        match (value, pos) {
            (_, Position::Operand) => {}
            (Value::Null, _) => {}
            (Value::String(s), _) => {
                if !names.contains(s.as_str()) {
                    self.faults.flagd_resolves(format!(
                        "targeting can return \"{s}\", which is not a variant"
                    ));
                }
            }
            (Value::Bool(_), Position::WeakResult) => {}
            (Value::Bool(b), Position::Result) => {
                let name = if *b { "true" } else { "false" };
                if !names.contains(name) {
                    self.faults.flagd_resolves(format!(
                        "targeting can return {b}, but there is no variant named \"{name}\""
                    ));
                }
            }
            (Value::Number(_), Position::WeakResult) => {}
            (other, _) => {
                self.faults.flagd_resolves(format!(
                    "targeting can return {}, which is not a variant name (a string, true, false or null)",
                    short_json(other)
                ));
            }
        }
    }

    fn node(&mut self, v: &Value, scope: Scope, pos: Position, depth: usize) -> Node {
        if depth > MAX_DEPTH {
            self.faults
                .add(format!("rule is nested deeper than {MAX_DEPTH} levels"));
            return Node::Null;
        }
        match v {
            Value::Object(map) => self.operation(map, scope, pos, depth),
            Value::Array(items) => {
                self.check_result_constant(v, pos);
                let mut nodes = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    self.faults.push_index(i);
                    nodes.push(self.node(item, scope, Position::Operand, depth + 1));
                    self.faults.pop();
                }
                if nodes.iter().all(is_const) {
                    Node::Json(v.clone())
                } else {
                    Node::Array(nodes)
                }
            }
            other => {
                self.check_result_constant(other, pos);
                if let (Value::String(s), Position::Result, Some(variants)) =
                    (other, pos, &self.variants)
                {
                    if variants.names.contains(s.as_str()) {
                        // The flag's variants are sorted by name, as the set is.
                        let index = variants
                            .names
                            .iter()
                            .take_while(|n| n.as_str() < s.as_str())
                            .count();
                        return Node::Variant {
                            index,
                            name: s.as_str().into(),
                        };
                    }
                }
                literal(other)
            }
        }
    }

    fn operation(
        &mut self,
        map: &Map<String, Value>,
        scope: Scope,
        pos: Position,
        depth: usize,
    ) -> Node {
        let mut entries = map.iter();
        let (op, raw) = match (entries.next(), entries.next()) {
            (Some(entry), None) => entry,
            (None, _) => {
                self.faults
                    .add("an empty object is not a rule (an operation has exactly one key)");
                return Node::Null;
            }
            (Some(_), Some(_)) => {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                self.faults.add(format!(
                    "a rule object must have exactly one operator key, found {}: {}",
                    keys.len(),
                    keys.join(", ")
                ));
                return Node::Null;
            }
        };
        let op = op.as_str();
        if op == "$ref" {
            self.root_reads += 1;
            return self.reference(raw);
        }
        self.faults.push_key(op);
        let reads = (self.root_reads, self.item_reads);
        let node = self.operation_body(op, raw, scope, pos, depth);
        if (self.root_reads, self.item_reads) == reads {
            self.prove_bounded(&node);
        }
        self.faults.pop();
        node
    }

    /// An operation that reads nothing from the evaluation evaluates the same way every time:
    /// evaluate it now, and if it exceeds the evaluation budget, refuse it here rather than let
    /// every evaluation fail. Constant sub-rules are checked until `proof_steps` run out, so
    /// compiling stays bounded too.
    fn prove_bounded(&mut self, node: &Node) {
        if self.proof_steps == 0 || is_const(node) {
            return;
        }
        let empty = Map::new();
        let env = Env::new(&empty, "", 0);
        eval_constant(node, &env);
        self.proof_steps = self.proof_steps.saturating_sub(env.budget.spent());
        if let Some(why) = env.budget.exceeded() {
            self.faults.add(format!(
                "this expression reads nothing from the context and always exceeds the evaluation budget: {}",
                why.describe()
            ));
        }
    }

    fn reference(&mut self, raw: &Value) -> Node {
        let Value::String(name) = raw else {
            self.faults
                .add_at_key("$ref", "a $ref must name a segment with a string");
            return Node::Null;
        };
        match (self.resolve)(name) {
            RefLookup::Found(node) => Node::Ref(node),
            RefLookup::Unchecked => Node::Null,
            RefLookup::Missing => {
                self.faults
                    .add_at_key("$ref", format!("segment \"{name}\" does not exist"));
                Node::Null
            }
            RefLookup::Broken(why) => {
                self.faults
                    .add_at_key("$ref", format!("segment \"{name}\" is not usable: {why}"));
                Node::Null
            }
        }
    }

    /// Compiles argument `i` of the current operation.
    fn arg(&mut self, args: &[Value], i: usize, scope: Scope, pos: Position, depth: usize) -> Node {
        self.faults.push_index(i);
        let n = self.node(&args[i], scope, pos, depth + 1);
        self.faults.pop();
        n
    }

    fn args(&mut self, args: &[Value], scope: Scope, pos: Position, depth: usize) -> Vec<Node> {
        (0..args.len())
            .map(|i| self.arg(args, i, scope, pos, depth))
            .collect()
    }

    fn two(&mut self, args: &[Value], scope: Scope, depth: usize) -> Box<[Node; 2]> {
        Box::new([
            self.arg(args, 0, scope, Position::Operand, depth),
            self.arg(args, 1, scope, Position::Operand, depth),
        ])
    }

    /// Checks that `raw` is an array of `min..=max` arguments.
    fn arity<'v>(
        &mut self,
        op: &str,
        raw: &'v Value,
        min: usize,
        max: Option<usize>,
    ) -> Option<&'v [Value]> {
        let Value::Array(args) = raw else {
            self.faults
                .add(format!("\"{op}\" takes an array of arguments"));
            return None;
        };
        let n = args.len();
        let ok = n >= min && max.is_none_or(|m| n <= m);
        if !ok {
            let expected = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            self.faults.add(format!(
                "\"{op}\" takes {expected} argument{}, found {n}",
                if expected == "1" { "" } else { "s" }
            ));
            return None;
        }
        Some(args)
    }

    /// Like [`Compiler::arity`] for an operator that flagd answers with null when it gets
    /// another number of arguments than `n`: that is a [`Faults::flagd_resolves`].
    fn arity_or_null<'v>(&mut self, op: &str, raw: &'v Value, n: usize) -> Option<&'v [Value]> {
        let found = match raw {
            Value::Array(args) if args.len() == n => return Some(args),
            Value::Array(args) => args.len(),
            _ => 1,
        };
        self.faults.flagd_resolves(format!(
            "\"{op}\" takes {n} arguments, found {found} (flagd answers null)"
        ));
        None
    }

    fn operation_body(
        &mut self,
        op: &str,
        raw: &Value,
        scope: Scope,
        pos: Position,
        depth: usize,
    ) -> Node {
        use Position::Operand;
        match op {
            "var" => self.var(raw, scope, depth),
            "missing" => {
                self.read(scope);
                let args: Vec<Node> = match raw {
                    Value::Array(items) => self.args(items, scope, Operand, depth),
                    other => vec![self.node(other, scope, Operand, depth + 1)],
                };
                Node::Missing(args)
            }
            "missing_some" => match self.arity(op, raw, 2, Some(2)) {
                Some(args) => {
                    self.read(scope);
                    if !matches!(args[0], Value::Number(_) | Value::Object(_)) {
                        self.faults.push_index(0);
                        self.faults
                            .add("\"missing_some\" needs a minimum count as its first argument");
                        self.faults.pop();
                    }
                    let need = self.arg(args, 0, scope, Operand, depth);
                    let keys = self.arg(args, 1, scope, Operand, depth);
                    Node::MissingSome(Box::new(need), Box::new(keys))
                }
                None => Node::Null,
            },
            "if" | "?:" => match self.arity(op, raw, 1, None) {
                Some(args) => {
                    let n = args.len();
                    let nodes = (0..n)
                        .map(|i| {
                            // Conditions are at even positions, except a trailing else.
                            let is_branch = i % 2 == 1 || i == n - 1 && n > 1;
                            let p = if is_branch { pos } else { Operand };
                            self.arg(args, i, scope, p, depth)
                        })
                        .collect();
                    Node::If(nodes)
                }
                None => Node::Null,
            },
            "==" | "===" | "!=" | "!==" | ">" | ">=" | "%" | "/" | "in" => {
                match self.arity(op, raw, 2, Some(2)) {
                    Some(args) => {
                        if op == "in" {
                            if let Some(set) = constant_strings(&args[1]) {
                                let needle = self.arg(args, 0, scope, Operand, depth);
                                return Node::InStrings(Box::new(needle), set);
                            }
                        }
                        let two = self.two(args, scope, depth);
                        match op {
                            "==" => Node::Eq(two),
                            "===" => Node::StrictEq(two),
                            "!=" => Node::Ne(two),
                            "!==" => Node::StrictNe(two),
                            ">" => Node::Greater(two),
                            ">=" => Node::GreaterEq(two),
                            "%" => Node::Mod(two),
                            "/" => Node::Div(two),
                            _ => Node::In(two),
                        }
                    }
                    None => Node::Null,
                }
            }
            "!" | "!!" => {
                let inner = match raw {
                    Value::Array(items) => {
                        if items.len() != 1 {
                            self.faults
                                .add(format!("\"{op}\" takes 1 argument, found {}", items.len()));
                            return Node::Null;
                        }
                        self.arg(items, 0, scope, Operand, depth)
                    }
                    other => self.node(other, scope, Operand, depth + 1),
                };
                if op == "!" {
                    Node::Not(Box::new(inner))
                } else {
                    Node::Truthy(Box::new(inner))
                }
            }
            "or" | "and" => match self.arity(op, raw, 1, None) {
                Some(args) => {
                    let p = if pos == Operand {
                        Operand
                    } else {
                        Position::WeakResult
                    };
                    let nodes = self.args(args, scope, p, depth);
                    if op == "or" {
                        Node::Or(nodes)
                    } else {
                        Node::And(nodes)
                    }
                }
                None => Node::Null,
            },
            "<" | "<=" | "substr" => match self.arity(op, raw, 2, Some(3)) {
                Some(args) => {
                    let nodes = self.args(args, scope, Operand, depth);
                    match op {
                        "<" => Node::Less(nodes),
                        "<=" => Node::LessEq(nodes),
                        _ => Node::Substr(nodes),
                    }
                }
                None => Node::Null,
            },
            "+" | "-" | "max" | "min" | "merge" | "cat" => match self.arity(op, raw, 1, None) {
                Some(args) => {
                    let nodes = self.args(args, scope, Operand, depth);
                    match op {
                        "+" => Node::Add(nodes),
                        "-" => Node::Sub(nodes),
                        "max" => Node::Max(nodes),
                        "min" => Node::Min(nodes),
                        "merge" => Node::Merge(nodes),
                        _ => Node::Cat(nodes),
                    }
                }
                None => Node::Null,
            },
            "*" => match self.arity(op, raw, 2, None) {
                Some(args) => Node::Mul(self.args(args, scope, Operand, depth)),
                None => Node::Null,
            },
            "map" | "filter" | "all" | "some" | "none" => match self.arity(op, raw, 2, Some(2)) {
                Some(args) => {
                    let list = self.arg(args, 0, scope, Operand, depth);
                    let body = self.item_body(args, 1, depth);
                    let pair = Box::new([list, body]);
                    match op {
                        "map" => Node::Map(pair),
                        "filter" => Node::Filter(pair),
                        "all" => Node::All(pair),
                        "some" => Node::Some(pair),
                        _ => Node::None(pair),
                    }
                }
                None => Node::Null,
            },
            "reduce" => match self.arity(op, raw, 3, Some(3)) {
                Some(args) => {
                    let list = self.arg(args, 0, scope, Operand, depth);
                    let body = self.item_body(args, 1, depth);
                    let init = self.arg(args, 2, scope, Operand, depth);
                    Node::Reduce(Box::new([list, body, init]))
                }
                None => Node::Null,
            },
            // flagd answers null for the wrong number or type of arguments.
            "starts_with" | "ends_with" => match self.arity_or_null(op, raw, 2) {
                Some(args) => {
                    for (i, a) in args.iter().enumerate() {
                        if !matches!(a, Value::String(_) | Value::Object(_)) {
                            self.faults.push_index(i);
                            self.faults.flagd_resolves(format!(
                                "\"{op}\" compares strings; {} is not a string",
                                short_json(a)
                            ));
                            self.faults.pop();
                        }
                    }
                    let two = self.two(args, scope, depth);
                    if op == "starts_with" {
                        Node::StartsWith(two)
                    } else {
                        Node::EndsWith(two)
                    }
                }
                None => Node::Null,
            },
            // flagd answers null when it cannot compare (arguments, versions, operator).
            "sem_ver" => match self.arity_or_null(op, raw, 3) {
                Some(args) => {
                    for i in [0, 2] {
                        if let Value::String(s) = &args[i] {
                            if semver::parse_lenient(s).is_none() {
                                self.faults.push_index(i);
                                self.faults
                                    .flagd_resolves(format!("\"{s}\" is not a semantic version"));
                                self.faults.pop();
                            }
                        } else if !args[i].is_object() {
                            self.faults.push_index(i);
                            self.faults.flagd_resolves(format!(
                                "{} is not a semantic version string",
                                short_json(&args[i])
                            ));
                            self.faults.pop();
                        }
                    }
                    match &args[1] {
                        Value::String(s) if semver::Operator::parse(s).is_some() => {}
                        Value::Object(_) => {}
                        other => {
                            self.faults.push_index(1);
                            self.faults.flagd_resolves(format!(
                                "{} is not a sem_ver operator (=, !=, <, <=, >, >=, ^, ~)",
                                short_json(other)
                            ));
                            self.faults.pop();
                        }
                    }
                    Node::SemVer(Box::new([
                        self.arg(args, 0, scope, Operand, depth),
                        self.arg(args, 1, scope, Operand, depth),
                        self.arg(args, 2, scope, Operand, depth),
                    ]))
                }
                None => Node::Null,
            },
            "fractional" => self.fractional(raw, scope, pos, depth),
            other => {
                self.faults.add(format!("unknown operator \"{other}\""));
                Node::Null
            }
        }
    }

    fn var(&mut self, raw: &Value, scope: Scope, depth: usize) -> Node {
        let (path, default) = match raw {
            Value::Array(items) => {
                if items.len() > 2 {
                    self.faults.add(format!(
                        "\"var\" takes a path and an optional default, found {} arguments",
                        items.len()
                    ));
                    return Node::Null;
                }
                let default = if items.len() == 2 {
                    Some(Box::new(self.arg(
                        items,
                        1,
                        scope,
                        Position::Operand,
                        depth,
                    )))
                } else {
                    None
                };
                match items.first() {
                    None => (&Value::String(String::new()), None),
                    Some(p) => (p, default),
                }
            }
            other => (other, None),
        };
        let text = match path {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            Value::Object(_) => {
                self.read(scope);
                let dynamic = self.node(path, scope, Position::Operand, depth + 1);
                return Node::VarDyn {
                    path: Box::new(dynamic),
                    default,
                };
            }
            other => {
                self.faults.add(format!(
                    "\"var\" path must be a string or a number, found {}",
                    short_json(other)
                ));
                return Node::Null;
            }
        };
        self.read(scope);
        if let Some(prop) = text.strip_prefix("$flagd.") {
            match (prop, scope) {
                ("flagKey", Scope::Root) => return Node::FlagKey,
                ("timestamp", Scope::Root) => return Node::Timestamp,
                ("flagKey" | "timestamp", Scope::Item) => {}
                (other, _) => {
                    self.faults.add(format!(
                        "\"$flagd.{other}\" is not a flagd property (only $flagd.flagKey and $flagd.timestamp exist)"
                    ));
                    return Node::Null;
                }
            }
        }
        Node::Var {
            path: split_path(&text),
            default,
        }
    }

    /// The body of a `map`/`filter`/`all`/`some`/`none`/`reduce`: its item reads are bound by
    /// the operation, so they do not make the operation read anything.
    fn item_body(&mut self, args: &[Value], i: usize, depth: usize) -> Node {
        let item_reads = self.item_reads;
        let body = self.arg(args, i, Scope::Item, Position::Operand, depth);
        self.item_reads = item_reads;
        body
    }

    fn read(&mut self, scope: Scope) {
        match scope {
            Scope::Root => self.root_reads += 1,
            Scope::Item => self.item_reads += 1,
        }
    }

    fn fractional(&mut self, raw: &Value, scope: Scope, pos: Position, depth: usize) -> Node {
        self.root_reads += 1;
        let Some(args) = self.arity("fractional", raw, 1, None) else {
            return Node::Null;
        };
        // A leading non-array argument is the bucketing expression (flagd's schema allows a
        // rule there; a distribution is always an array literal).
        let (bucket_by, first) = match &args[0] {
            Value::Array(_) => (None, 0),
            Value::Object(_) | Value::Null => {
                (Some(self.arg(args, 0, scope, Position::Operand, depth)), 1)
            }
            other => {
                self.faults.push_index(0);
                self.faults.add(format!(
                    "the bucketing value must be an expression such as {{\"var\": \"email\"}}, found {}",
                    short_json(other)
                ));
                self.faults.pop();
                (None, 1)
            }
        };
        if args.len() <= first {
            self.faults
                .add("\"fractional\" needs at least one [variant, weight] distribution");
            return Node::Null;
        }
        let mut buckets = Vec::with_capacity(args.len() - first);
        let mut const_total: Option<u64> = Some(0);
        for (i, dist) in args.iter().enumerate().skip(first) {
            self.faults.push_index(i);
            let items = match dist {
                Value::Array(items) if (1..=2).contains(&items.len()) => items,
                _ => {
                    self.faults
                        .add("a distribution is an array [variant] or [variant, weight]");
                    self.faults.pop();
                    const_total = None;
                    continue;
                }
            };
            let variant = self.arg(
                items,
                0,
                scope,
                if pos == Position::Operand {
                    Position::Operand
                } else {
                    Position::Result
                },
                depth,
            );
            let weight = match items.get(1) {
                None | Some(Value::Null) => Weight::Const(1),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(w) if w <= i32::MAX as u64 => Weight::Const(w as u32),
                    // flagd clamps a negative weight to 0 (a rollout's arithmetic can go below).
                    None if n.as_i64().is_some_and(|w| w < 0) => {
                        self.faults.push_index(1);
                        self.faults.flagd_resolves(format!(
                            "a weight must be a whole number from 0 to {}, found {n} (flagd counts it as 0)",
                            i32::MAX
                        ));
                        self.faults.pop();
                        Weight::Const(0)
                    }
                    _ => {
                        self.faults.push_index(1);
                        self.faults.add(format!(
                            "a weight must be a whole number from 0 to {}, found {n}",
                            i32::MAX
                        ));
                        self.faults.pop();
                        Weight::Const(0)
                    }
                },
                Some(Value::Object(_)) => {
                    const_total = None;
                    Weight::Expr(self.arg(items, 1, scope, Position::Operand, depth))
                }
                Some(other) => {
                    self.faults.push_index(1);
                    self.faults.add(format!(
                        "a weight must be a number or an expression, found {}",
                        short_json(other)
                    ));
                    self.faults.pop();
                    Weight::Const(0)
                }
            };
            if let (Some(total), Weight::Const(w)) = (const_total, &weight) {
                const_total = Some(total + u64::from(*w));
            }
            buckets.push(Bucket { variant, weight });
            self.faults.pop();
        }
        if let Some(total) = const_total {
            if total > i32::MAX as u64 {
                self.faults.add(format!(
                    "the weights add up to {total}, more than the maximum {}",
                    i32::MAX
                ));
            }
        }
        Node::Fractional(Box::new(Fractional {
            bucket_by,
            buckets,
            const_total,
        }))
    }
}

/// Whether `var` paths refer to the evaluation context (root) or to an array element
/// (inside `map`, `filter`, `all`, `some`, `none`, `reduce`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Root,
    Item,
}

fn is_const(n: &Node) -> bool {
    matches!(
        n,
        Node::Null
            | Node::Bool(_)
            | Node::Num(_)
            | Node::Str(_)
            | Node::Variant { .. }
            | Node::Json(_)
    )
}

fn literal(v: &Value) -> Node {
    match v {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => Node::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Node::Str(s.as_str().into()),
        other => Node::Json(other.clone()),
    }
}

fn constant_strings(v: &Value) -> Option<Box<[Box<str>]>> {
    let Value::Array(items) = v else { return None };
    items
        .iter()
        .map(|i| i.as_str().map(Box::from))
        .collect::<Option<Vec<_>>>()
        .map(Vec::into_boxed_slice)
}

pub(crate) fn split_path(text: &str) -> VarPath {
    if text.is_empty() {
        return VarPath {
            parts: Box::new([]),
        };
    }
    let parts = text
        .split('.')
        .map(|k| PathPart {
            key: k.into(),
            index: k.parse::<usize>().ok(),
        })
        .collect();
    VarPath { parts }
}

/// A JSON value shortened for a message.
pub(crate) fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let cut: String = s.chars().take(37).collect();
        format!("{cut}...")
    } else {
        s
    }
}
