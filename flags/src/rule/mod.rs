//! JsonLogic rules as flagd uses them: compiled once into a tree of [`Node`]s, then evaluated
//! against a context without walking JSON.

pub(crate) mod compile;
pub(crate) mod eval;
pub(crate) mod value;

use serde_json::Value;
use std::sync::Arc;

/// A compiled JsonLogic expression.
#[derive(Debug)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    /// A string constant in a result position that names one of the flag's variants, resolved
    /// to the variant's index (in the flag's sorted variants) when the flag is compiled.
    Variant {
        index: usize,
        name: Box<str>,
    },
    /// A constant array or object, kept as JSON and borrowed at evaluation.
    Json(Value),
    /// An array literal with at least one non-constant element.
    Array(Vec<Node>),
    Var {
        path: VarPath,
        default: Option<Box<Node>>,
    },
    /// `var` whose path is itself computed.
    VarDyn {
        path: Box<Node>,
        default: Option<Box<Node>>,
    },
    /// `$flagd.flagKey` at the root scope.
    FlagKey,
    /// `$flagd.timestamp` at the root scope.
    Timestamp,
    Missing(Vec<Node>),
    MissingSome(Box<Node>, Box<Node>),
    If(Vec<Node>),
    Eq(Box<[Node; 2]>),
    StrictEq(Box<[Node; 2]>),
    Ne(Box<[Node; 2]>),
    StrictNe(Box<[Node; 2]>),
    Not(Box<Node>),
    Truthy(Box<Node>),
    Or(Vec<Node>),
    And(Vec<Node>),
    Less(Vec<Node>),
    LessEq(Vec<Node>),
    Greater(Box<[Node; 2]>),
    GreaterEq(Box<[Node; 2]>),
    In(Box<[Node; 2]>),
    /// `in` against a constant array of strings: the common "is the user in this list" rule.
    InStrings(Box<Node>, Box<[Box<str>]>),
    Cat(Vec<Node>),
    Substr(Vec<Node>),
    Add(Vec<Node>),
    Sub(Vec<Node>),
    Mul(Vec<Node>),
    Div(Box<[Node; 2]>),
    Mod(Box<[Node; 2]>),
    Min(Vec<Node>),
    Max(Vec<Node>),
    Merge(Vec<Node>),
    Map(Box<[Node; 2]>),
    Filter(Box<[Node; 2]>),
    All(Box<[Node; 2]>),
    Some(Box<[Node; 2]>),
    None(Box<[Node; 2]>),
    Reduce(Box<[Node; 3]>),
    StartsWith(Box<[Node; 2]>),
    EndsWith(Box<[Node; 2]>),
    SemVer(Box<[Node; 3]>),
    Fractional(Box<Fractional>),
    /// A `$ref` to a segment, linked to the segment's compiled rule. Evaluated at the root
    /// scope of the context, whatever scope the reference appears in.
    Ref(Arc<Node>),
}

/// A `var` path split once at compile time (`user.email` → `["user", "email"]`).
#[derive(Debug)]
pub(crate) struct VarPath {
    /// Empty means the whole data object (`{"var": ""}`).
    pub(crate) parts: Box<[PathPart]>,
}

#[derive(Debug)]
pub(crate) struct PathPart {
    pub(crate) key: Box<str>,
    /// The key as an array index, when it is one.
    pub(crate) index: Option<usize>,
}

/// flagd's `fractional`: see `crate::fractional`.
#[derive(Debug)]
pub(crate) struct Fractional {
    /// The bucketing expression; `None` buckets by `$flagd.flagKey` + `targetingKey`.
    pub(crate) bucket_by: Option<Node>,
    pub(crate) buckets: Vec<Bucket>,
    /// Sum of the weights when every weight is a constant.
    pub(crate) const_total: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) variant: Node,
    pub(crate) weight: Weight,
}

#[derive(Debug)]
pub(crate) enum Weight {
    Const(u32),
    Expr(Node),
}
