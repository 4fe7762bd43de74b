//! A standalone compiled JsonLogic rule, evaluated to a JSON value (segment previews, tests).

use crate::context::Context;
use crate::evaluation::{ErrorCode, EvaluationError};
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

    /// Evaluates the rule against `ctx`, with `flag_key` as `$flagd.flagKey`. Like JsonLogic,
    /// invalid operands produce `null` or `false`, and numbers that are not finite become
    /// `null`, as in JSON. Fails only when the evaluation exceeds its budget
    /// ([`crate::limits`]): `GENERAL`, with what was exceeded.
    pub fn evaluate(&self, ctx: &Context, flag_key: &str) -> Result<Value, EvaluationError> {
        let env = Env::new(ctx.attributes(), flag_key, ctx.timestamp());
        let value = eval_targeting(&self.node, &env)
            .0
            .into_val()
            .to_json(&env.budget);
        match env.budget.exceeded() {
            None => Ok(value),
            Some(why) => Err(EvaluationError::new(
                ErrorCode::General,
                format!("the rule's evaluation was stopped: {}", why.describe()),
            )),
        }
    }
}
