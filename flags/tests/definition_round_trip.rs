//! Typed definitions read and write flagd's JSON and round-trip: parse → serialize → parse gives
//! an equal value, for the data-file cases and for arbitrary definitions; and a document written
//! back evaluates exactly as the one read.

use flagstaff_flags::{
    validate_document, validate_flag, Context, ExperimentDefinition, FlagDefinition, FlagSet,
    FlagState, FlagdDocument, FractionalAlgorithm,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn load(text: &str) -> Value {
    serde_json::from_str(text).expect("case file is valid JSON")
}

/// parse → serialize (as text) → parse, and parse → serialize (as a `Value`) → parse.
fn round_trips<T>(typed: &T) -> Result<(), String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(typed).map_err(|e| e.to_string())?;
    let again: T = serde_json::from_str(&text).map_err(|e| format!("{e} in {text}"))?;
    if &again != typed {
        return Err(format!("text round trip changed {typed:?} into {again:?}"));
    }
    let value = serde_json::to_value(typed).map_err(|e| e.to_string())?;
    let again: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if &again != typed {
        return Err(format!("value round trip changed {typed:?} into {again:?}"));
    }
    Ok(())
}

#[test]
fn field_names_are_flagds() {
    let doc = json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {"f": {"state": "DISABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "off", "targeting": {"$ref": "staff"},
                        "metadata": {"owner": "web"}, "description": "d", "tags": ["t"]}},
        "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@x.com"]}},
        "metadata": {"flagSetId": "shop"}
    });
    let typed = FlagdDocument::from_json(&doc).expect("valid document");
    assert_eq!(
        typed.schema.as_deref(),
        Some("https://flagd.dev/schema/v0/flags.json")
    );
    let f = &typed.flags["f"];
    assert_eq!(f.state, FlagState::Disabled);
    assert_eq!(f.default_variant.as_deref(), Some("off"));
    assert_eq!(f.tags, ["t"]);
    assert_eq!(typed.evaluators.len(), 1);
    // Nothing was dropped or renamed: the written JSON is the JSON read.
    assert_eq!(typed.to_json(), doc);
}

#[test]
fn absent_and_null_optional_fields_read_alike() {
    let bare = json!({"state": "ENABLED", "variants": {"on": true}});
    let nulls = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": null, "targeting": null});
    let a = FlagDefinition::from_json(&bare).expect("valid");
    let b = FlagDefinition::from_json(&nulls).expect("valid");
    assert_eq!(a, b);
    assert_eq!(a.to_json(), bare);
    let doc = FlagdDocument::from_json(&json!({"flags": {"f": bare}, "$evaluators": null}))
        .expect("valid");
    assert!(doc.evaluators.is_empty());
}

#[test]
fn shape_faults_are_refused() {
    for bad in [
        json!({"state": "ON", "variants": {"on": true}}),
        json!({"state": "ENABLED"}),
        json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": 1}),
        json!({"state": "ENABLED", "variants": {"on": true}, "colour": "red"}),
        json!({"state": "ENABLED", "variants": {"on": true}, "tags": [1]}),
    ] {
        assert!(
            serde_json::from_value::<FlagDefinition>(bad.clone()).is_err(),
            "{bad}"
        );
        // The validating constructor reports the same faults as the validator, with paths.
        assert_eq!(
            FlagDefinition::from_json(&bad).err(),
            validate_flag(&bad).err(),
            "{bad}"
        );
    }
    assert!(serde_json::from_value::<FlagdDocument>(json!({"flags": {}, "extra": 1})).is_err());
    assert!(serde_json::from_value::<FlagdDocument>(json!({"$evaluators": {}})).is_err());
}

#[test]
fn array_form_reads_as_the_object_form() {
    let array = json!({"flags": [
        {"key": "a", "state": "ENABLED", "variants": {"on": true}},
        {"key": "b", "state": "DISABLED", "variants": {"x": "1"}, "defaultVariant": "x"}
    ]});
    let object = json!({"flags": {
        "a": {"state": "ENABLED", "variants": {"on": true}},
        "b": {"state": "DISABLED", "variants": {"x": "1"}, "defaultVariant": "x"}
    }});
    let typed = FlagdDocument::from_json(&array).expect("valid");
    assert_eq!(typed, FlagdDocument::from_json(&object).expect("valid"));
    assert_eq!(typed.to_json(), object);
    for bad in [
        json!({"flags": [{"state": "ENABLED", "variants": {"on": true}}]}),
        json!({"flags": [{"key": "a", "state": "ENABLED", "variants": {"on": true}},
                         {"key": "a", "state": "ENABLED", "variants": {"on": true}}]}),
    ] {
        assert!(
            serde_json::from_value::<FlagdDocument>(bad.clone()).is_err(),
            "{bad}"
        );
        assert!(FlagdDocument::from_json(&bad).is_err(), "{bad}");
    }
}

/// The evaluation table's document, read as typed values, written back and read again, is
/// equal; and the written document evaluates every case exactly as the original does.
#[test]
fn flag_cases_document_round_trips_and_evaluates_the_same() {
    let table = load(include_str!("cases/flags.json"));
    let original = &table["document"];
    // Structure only: the table deliberately holds one flag that does not validate.
    let typed: FlagdDocument =
        serde_json::from_value(original.clone()).expect("the table's document reads");
    round_trips(&typed).expect("round trip");
    let written = typed.to_json();

    let (before, faults_before) = FlagSet::from_document_lossy(original);
    let (after, faults_after) = FlagSet::from_document_lossy(&written);
    assert_eq!(faults_before, faults_after);
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 45, "the table lost cases");
    for case in cases {
        let key = case["flag"].as_str().expect("flag");
        let timestamp = case["timestamp"].as_i64().unwrap_or(1_700_000_000);
        let ctx = match &case["context"] {
            Value::Object(m) => Context::from_attributes(m.clone(), timestamp),
            _ => Context::new(timestamp),
        };
        assert_eq!(
            before.resolve(key, &ctx),
            after.resolve(key, &ctx),
            "{}",
            case["name"]
        );
    }
}

/// Every valid flag and document of the validation table round-trips, and what is written
/// back still validates.
#[test]
fn validation_cases_round_trip() {
    let table = load(include_str!("cases/validation.json"));
    let mut checked = 0;
    for case in table["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap_or("?");
        let input = &case["input"];
        match case["kind"].as_str() {
            Some("flag") if validate_flag(input).is_ok() => {
                let typed = FlagDefinition::from_json(input).expect(name);
                round_trips(&typed).expect(name);
                assert_eq!(typed.validate(), Ok(()), "{name}");
                checked += 1;
            }
            Some("document") if validate_document(input).is_ok() => {
                let typed = FlagdDocument::from_json(input).expect(name);
                round_trips(&typed).expect(name);
                assert_eq!(typed.validate(), Ok(()), "{name}");
                assert!(typed.compile().is_ok(), "{name}");
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 8, "only {checked} valid cases round-tripped");
}

fn name() -> impl Strategy<Value = String> {
    // Includes the empty string and characters JSON must escape.
    "[a-z\"\\\\ é$-]{0,6}"
}

/// Numbers whose decimal text is short, so a text round trip is exact (serde_json's default
/// float parser is not correctly rounded for every long decimal).
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i32>().prop_map(|n| json!(f64::from(n) / 8.0)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        name().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object(values: impl Strategy<Value = Value>) -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(name(), values, 0..4).prop_map(|m| m.into_iter().collect())
}

fn definition() -> impl Strategy<Value = FlagDefinition> {
    (
        prop_oneof![Just(FlagState::Enabled), Just(FlagState::Disabled)],
        object(json_value()),
        proptest::option::of(name()),
        // `Some(Value::Null)` would read back as `None`, as flagd means it: not generated.
        proptest::option::of(json_value().prop_filter("null is absent", |v| !v.is_null())),
        object(prop_oneof![
            name().prop_map(Value::String),
            number(),
            any::<bool>().prop_map(Value::Bool)
        ]),
        proptest::option::of(name()),
        proptest::collection::vec(name(), 0..3),
        proptest::option::of(prop_oneof![
            Just(FractionalAlgorithm::V2),
            Just(FractionalAlgorithm::V3)
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(
                state,
                variants,
                default_variant,
                targeting,
                metadata,
                description,
                tags,
                fractional_algorithm,
                experiment,
            )| {
                let experiment = experiment
                    .then(|| variants.keys().next().cloned())
                    .flatten()
                    .map(|control| ExperimentDefinition {
                        control,
                        metrics: vec!["converted".into()],
                    });
                FlagDefinition {
                    state,
                    variants,
                    default_variant,
                    targeting,
                    metadata,
                    description,
                    tags,
                    fractional_algorithm,
                    experiment,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn definitions_round_trip(def in definition()) {
        prop_assert_eq!(round_trips(&def), Ok(()));
    }

    #[test]
    fn documents_round_trip(
        schema in proptest::option::of(name()),
        flags in proptest::collection::btree_map(name(), definition(), 0..4),
        evaluators in proptest::collection::btree_map(name(), json_value(), 0..3),
        metadata in object(number()),
    ) {
        let doc = FlagdDocument { schema, flags, evaluators, metadata };
        prop_assert_eq!(round_trips(&doc), Ok(()));
        // The array form flagd's daemon also reads gives the same document.
        let mut json = doc.to_json();
        let listed: Vec<Value> = doc
            .flags
            .iter()
            .map(|(k, d)| {
                let mut v = d.to_json();
                if let Some(o) = v.as_object_mut() {
                    o.insert("key".into(), json!(k));
                }
                v
            })
            .collect();
        json["flags"] = Value::Array(listed);
        let from_array: Result<FlagdDocument, _> = serde_json::from_value(json);
        if doc.flags.keys().all(|k| !k.is_empty()) {
            prop_assert_eq!(from_array.ok(), Some(doc));
        } else {
            prop_assert!(from_array.is_err());
        }
    }
}
