//! The flag document both SDK benchmarks evaluate: a static flag, a two-condition rule and
//! 1,000 more flags, so lookups run in a realistically sized set.

use serde_json::json;

pub fn document() -> serde_json::Value {
    let mut flags = serde_json::Map::new();
    flags.insert(
        "static".into(),
        json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}),
    );
    flags.insert("rule".into(), json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off",
        "targeting":{"if":[{"and":[{"in":[{"var":"plan"},["pro","team"]]},{"ends_with":[{"var":"email"},"@example.com"]}]},"on","off"]}}));
    for i in 0..1000 {
        flags.insert(
            format!("flag-{i}"),
            json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"}),
        );
    }
    json!({ "flags": flags })
}
