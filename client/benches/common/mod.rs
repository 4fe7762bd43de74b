//! The flag document both SDK benchmarks evaluate: a static flag, a two-condition rule and
//! 1,000 more flags, so lookups run in a realistically sized set.

use flagstaff_client::Client;
use flagstaff_flags::{Context, FlagSet};
use serde_json::json;

/// The document compiled raw, the same document in a client, and a context matching the rule.
pub fn fixture() -> (FlagSet, Client, Context) {
    let doc = document();
    let raw = FlagSet::from_document(&doc).expect("valid document");
    let client = Client::builder("bench", "key")
        .bootstrap_document(doc)
        .build()
        .expect("client");
    let ctx = Context::new(0)
        .with_targeting_key("user-1")
        .with_attribute("plan", "pro")
        .with_attribute("email", "a@example.com");
    (raw, client, ctx)
}

fn document() -> serde_json::Value {
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
