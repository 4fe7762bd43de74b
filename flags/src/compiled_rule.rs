//! A standalone compiled JsonLogic rule, evaluated to a JSON value (segment previews, tests).

use crate::context::Context;
use crate::fault::Fault;
use crate::rule::compile::{Compiler, RefLookup};
use crate::rule::eval::{eval_targeting, Env};
use crate::rule::Node;
use serde_json::Value;

/// A JsonLogic rule (with flagd's operators) compiled once, evaluated any number of times.
/// `$ref`s are not allowed here: there are no segments to resolve them against.
#[derive(Debug)]
pub struct CompiledRule {
    node: Node,
}

impl CompiledRule {
    /// Compiles `rule`, or returns every fault (paths relative to the rule).
    pub fn compile(rule: &Value) -> Result<Self, Vec<Fault>> {
        let resolve = |_: &str| RefLookup::Missing;
        let mut compiler = Compiler::new(&resolve, None);
        let node = compiler.compile_root(rule, false);
        if compiler.faults.list.is_empty() {
            Ok(Self { node })
        } else {
            Err(compiler.faults.list)
        }
    }

    /// Evaluates the rule against `ctx`, with `flag_key` as `$flagd.flagKey`. Never fails:
    /// like JsonLogic, invalid operands produce `null` or `false`. Numbers that are not finite
    /// become `null`, as in JSON.
    pub fn evaluate(&self, ctx: &Context, flag_key: &str) -> Value {
        let env = Env {
            data: ctx.attributes(),
            flag_key,
            timestamp: ctx.timestamp(),
        };
        eval_targeting(&self.node, &env).0.into_val().to_json()
    }
}
