//! What flagd accepts and resolves when it evaluates, although Flagstaff refuses it for new
//! writes: `validate_*_as_flagd` accept it with warnings at its path, and evaluation does what
//! flagd does (the flagd testbed's answers for the same constructs).

use flagstaff_flags::{
    validate_document, validate_document_as_flagd, validate_flag, validate_flag_as_flagd, Context,
    ErrorCode, FlagSet, Reason,
};
use serde_json::{json, Value};

fn flag(targeting: Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": "on", "off": "off", "other": "other"},
        "defaultVariant": "other", "targeting": targeting})
}

/// (targeting, context, expected value, reason, error, warning path)
type Case = (
    Value,
    Value,
    &'static str,
    Reason,
    Option<ErrorCode>,
    &'static str,
);

fn cases() -> Vec<Case> {
    use Reason::*;
    vec![
        // A branch naming no variant: GENERAL with the caller's default, when taken.
        (
            json!({"if": [true, "gone", "on"]}),
            json!({}),
            "code-default",
            Error,
            Some(ErrorCode::General),
            "targeting.if[1]",
        ),
        (
            json!({"if": [false, "gone", "on"]}),
            json!({}),
            "on",
            TargetingMatch,
            None,
            "targeting.if[1]",
        ),
        // Operators that cannot work answer null: the default variant, reason DEFAULT.
        (
            json!({"sem_ver": [{"var": "v"}, "="]}),
            json!({"v": "1.0.0"}),
            "other",
            Default,
            None,
            "targeting.sem_ver",
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "===", "1.0.0"]}),
            json!({"v": "1.0.0"}),
            "other",
            Default,
            None,
            "targeting.sem_ver[1]",
        ),
        (
            json!({"starts_with": ["abc"]}),
            json!({}),
            "other",
            Default,
            None,
            "targeting.starts_with",
        ),
        (
            json!({"ends_with": [{"var": "id"}, 3]}),
            json!({"id": "x3"}),
            "other",
            Default,
            None,
            "targeting.ends_with[1]",
        ),
        // ... and as a condition, null is false.
        (
            json!({"if": [{"sem_ver": [{"var": "v"}, "=", "2.0.0.0"]}, "on", "off"]}),
            json!({"v": "2.0.0"}),
            "off",
            TargetingMatch,
            None,
            "targeting.if[0].sem_ver[2]",
        ),
        // A negative weight counts as 0.
        (
            json!({"fractional": [["on", -50], ["off", 100]]}),
            json!({"targetingKey": "u"}),
            "off",
            Split,
            None,
            "targeting.fractional[0][1]",
        ),
    ]
}

#[test]
fn refused_for_writes_accepted_as_flagd_with_warnings_and_evaluated_as_flagd() {
    for (targeting, ctx, value, reason, error, warning) in cases() {
        let def = flag(targeting.clone());
        let faults = validate_flag(&def).expect_err("refused for a new write");
        assert_eq!(faults[0].path, warning, "{targeting}");
        let warnings =
            validate_flag_as_flagd(&def).unwrap_or_else(|f| panic!("{targeting}: {f:?}"));
        assert_eq!(warnings.len(), 1, "{targeting}: {warnings:?}");
        assert_eq!(warnings[0].path, warning, "{targeting}");

        let doc = json!({"flags": {"f": def}});
        validate_document(&doc).expect_err("refused");
        let warnings = validate_document_as_flagd(&doc).expect("accepted as flagd");
        assert_eq!(warnings[0].path, format!("flags.f.{warning}"));
        // Evaluation compiles as flagd (the faults it reports are the strict ones, for logs).
        let (set, _) = FlagSet::from_document_lossy(&doc);
        let ctx = match ctx {
            Value::Object(m) => Context::from_attributes(m, 0),
            _ => unreachable!(),
        };
        let d = set.string("f", &ctx, "code-default");
        let code = d.error.as_ref().map(|e| e.code);
        assert_eq!(
            (d.value, d.reason, code),
            (value, reason, error),
            "{targeting}"
        );
    }
}

#[test]
fn an_unknown_operator_is_stored_as_flagd_does_and_evaluates_to_parse_error() {
    let doc = json!({"flags": {"f": flag(json!({"no-such": [1]})), "g": flag(json!(null))}});
    let warnings = validate_document_as_flagd(&doc).expect("accepted");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("PARSE_ERROR"), "{warnings:?}");
    let (set, _) = FlagSet::from_document_lossy(&doc);
    let ctx = Context::new(0);
    let d = set.string("f", &ctx, "code-default");
    let code = d.error.as_ref().map(|e| e.code);
    assert_eq!(
        (d.value, code),
        ("code-default", Some(ErrorCode::ParseError))
    );
    assert_eq!(set.string("g", &ctx, "x").value, "other");
}

#[test]
fn what_the_store_refuses_stays_refused() {
    // A $ref to a segment that does not exist, a cycle, a flag of the wrong shape.
    for doc in [
        json!({"flags": {"f": flag(json!({"$ref": "nope"}))}}),
        json!({"flags": {"f": flag(json!({"$ref": "a"}))}, "$evaluators": {"a": {"$ref": "a"}}}),
        json!({"flags": {"f": {"state": "ON", "variants": {}}}}),
        json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "z"}}}),
    ] {
        validate_document_as_flagd(&doc).expect_err(&doc.to_string());
    }
}
