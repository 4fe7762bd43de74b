//! Runs the table of validation cases in `tests/cases/validation.json`.

use flagstaff_flags::{validate_document, validate_flag, validate_segment, Fault};
use serde_json::Value;

fn deep_rule(depth: usize) -> Value {
    let mut v = Value::Bool(true);
    for _ in 0..depth {
        v = serde_json::json!({ "!": [v] });
    }
    v
}

#[test]
fn validation_cases() {
    let text = include_str!("cases/validation.json");
    let table: Value = serde_json::from_str(text).expect("validation.json is valid JSON");
    let cases = table["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 30, "the table lost cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let mut input = case["input"].clone();
        if input == "DEEP" {
            input = deep_rule(200);
        }
        let result = match case["kind"].as_str() {
            Some("flag") => validate_flag(&input),
            Some("segment") => validate_segment(&input),
            Some("document") => validate_document(&input),
            other => panic!("case {name}: unknown kind {other:?}"),
        };
        let got: Vec<Fault> = result.err().unwrap_or_default();
        let expected = case["faults"].as_array().expect("faults array");
        let mut unmatched: Vec<&Fault> = got.iter().collect();
        for e in expected {
            let (path, msg) = (e[0].as_str().unwrap_or(""), e[1].as_str().unwrap_or(""));
            match unmatched
                .iter()
                .position(|f| (path == "*" || f.path == path) && f.message.contains(msg))
            {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => failures.push(format!(
                    "{name}: expected fault {path}: …{msg}… in {got:#?}"
                )),
            }
        }
        for f in unmatched {
            failures.push(format!("{name}: unexpected fault {f}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fault_display_is_path_colon_message() {
    let f = Fault::new(
        "flags.new-checkout.defaultVariant",
        "\"blue\" is not a variant",
    );
    assert_eq!(
        f.to_string(),
        "flags.new-checkout.defaultVariant: \"blue\" is not a variant"
    );
}
