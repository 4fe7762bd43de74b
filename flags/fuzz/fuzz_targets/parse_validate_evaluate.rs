//! Fuzz target: arbitrary bytes → JSON → validate → compile → evaluate every flag with every
//! typed entry point; and the same bytes through the typed definitions, which must round-trip.
//! Any panic is a bug.
#![no_main]

use flagstaff_flags::{
    validate_document, validate_flag, validate_segment, Context, FlagDefinition, FlagSet,
    FlagdDocument,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The input is a document and a context separated by a NUL byte.
    let (doc, ctx) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    if let Ok(typed) = serde_json::from_slice::<FlagdDocument>(doc) {
        let again: FlagdDocument =
            serde_json::from_value(typed.to_json()).expect("a written document reads back");
        assert_eq!(again, typed, "document round trip");
    }
    if let Ok(typed) = serde_json::from_slice::<FlagDefinition>(doc) {
        let again: FlagDefinition =
            serde_json::from_value(typed.to_json()).expect("a written definition reads back");
        assert_eq!(again, typed, "definition round trip");
    }
    let Ok(doc) = serde_json::from_slice::<Value>(doc) else {
        return;
    };
    let ctx: Value = serde_json::from_slice(ctx).unwrap_or(Value::Null);
    let _ = validate_document(&doc);
    let _ = validate_flag(&doc);
    let _ = validate_segment(&doc);
    let (set, _) = FlagSet::from_document_lossy(&doc);
    let ctx = Context::from_json(&ctx, 1_700_000_000).unwrap_or_else(|_| Context::new(0));
    let keys: Vec<String> = set.keys().map(str::to_string).collect();
    for k in &keys {
        let _ = set.resolve(k, &ctx);
        let _ = set.boolean(k, &ctx, false);
        let _ = set.string(k, &ctx, "");
        let _ = set.integer(k, &ctx, 0);
        let _ = set.float(k, &ctx, 0.0);
        let _ = set.object(k, &ctx, &Value::Null);
    }
});
