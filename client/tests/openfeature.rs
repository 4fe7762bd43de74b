//! The OpenFeature provider through the `open-feature` crate's own client.

mod common;

use std::time::Duration;

use common::bool_flag;
use flagstaff_client::provider::FlagstaffProvider;
use flagstaff_client::Client;
use open_feature::provider::{FeatureProvider, ProviderStatus};
use open_feature::{
    EvaluationContext, EvaluationErrorCode, EvaluationReason, FlagMetadataValue, OpenFeature,
    StructValue,
};
use serde_json::json;

/// An OpenFeature API of this test's own. The global `OpenFeature::singleton_mut()` is one per
/// process, and a client made from it resolves with whatever provider was set last, so tests
/// that run in parallel threads (plain `cargo test`) would evaluate through each other's
/// providers. The crate's `OpenFeature` is a plain struct with `Default` (its own tests use it
/// so); an application sets its provider on the singleton in exactly the same way.
fn own_api() -> OpenFeature {
    OpenFeature::default()
}

#[tokio::test]
async fn reasons_variants_errors_and_metadata_map_through_openfeature() {
    let client = Client::builder("checkout", "key")
        .bootstrap_document(json!({"flags": {
            "plain": bool_flag("on"),
            "pro-only": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                         "targeting": {"if": [{"and": [{"==": [{"var": "targetingKey"}, "alice"]},
                                                      {"==": [{"var": "plan"}, "pro"]}]}, "on", "off"]},
                         "metadata": {"team": "payments", "tier": 2}},
            "limits": {"state": "ENABLED", "variants": {"v": {"max": 7, "name": "x", "none": null, "big": 18446744073709551615u64, "list": [1, null, "a"]}}, "defaultVariant": "v"},
            "ratio": {"state": "ENABLED", "variants": {"a": 0.5}, "defaultVariant": "a"},
            "count": {"state": "ENABLED", "variants": {"a": 3}, "defaultVariant": "a"},
            "word": {"state": "ENABLED", "variants": {"a": "hey"}, "defaultVariant": "a"}
        }}))
        .build()
        .unwrap();
    let provider = FlagstaffProvider::new(client).with_init_timeout(Duration::from_millis(50));
    assert_eq!(
        provider.status(),
        ProviderStatus::STALE,
        "bootstrap data has no proven age"
    );

    let mut api = own_api();
    api.set_provider(provider).await;
    let of = api.create_client();

    let alice = EvaluationContext::default()
        .with_targeting_key("alice")
        .with_custom_field("plan", "pro");
    let d = of
        .get_bool_details("pro-only", Some(&alice), None)
        .await
        .unwrap();
    assert!(d.value);
    assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));
    assert_eq!(d.variant.as_deref(), Some("on"));
    let m = &d.flag_metadata.values;
    assert_eq!(
        m.get("team"),
        Some(&FlagMetadataValue::String("payments".into()))
    );
    assert_eq!(m.get("tier"), Some(&FlagMetadataValue::Int(2)));
    assert_eq!(
        m.get("flagstaff.source"),
        Some(&FlagMetadataValue::String("bootstrap".into()))
    );
    assert_eq!(
        m.get("flagstaff.stale"),
        Some(&FlagMetadataValue::Bool(true))
    );

    let bob = EvaluationContext::default().with_targeting_key("bob");
    assert!(!of
        .get_bool_value("pro-only", Some(&bob), None)
        .await
        .unwrap());
    let plain = of.get_bool_details("plain", None, None).await.unwrap();
    assert_eq!(plain.reason, Some(EvaluationReason::Static));

    assert_eq!(of.get_int_value("count", None, None).await.unwrap(), 3);
    assert_eq!(of.get_float_value("ratio", None, None).await.unwrap(), 0.5);
    assert_eq!(
        of.get_string_value("word", None, None).await.unwrap(),
        "hey"
    );
    let s: StructValue = of.get_struct_value("limits", None, None).await.unwrap();
    assert_eq!(s.fields.get("max"), Some(&open_feature::Value::Int(7)));
    assert_eq!(s.fields.get("none"), None, "OpenFeature has no null");
    assert!(matches!(
        s.fields.get("big"),
        Some(open_feature::Value::Float(_))
    ));
    assert_eq!(
        s.fields.get("list"),
        Some(&open_feature::Value::Array(vec![1.into(), "a".into()]))
    );

    let missing = of.get_bool_value("nope", None, None).await.unwrap_err();
    assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
    let mismatch = of.get_int_value("word", None, None).await.unwrap_err();
    assert_eq!(mismatch.code, EvaluationErrorCode::TypeMismatch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_follows_a_real_node_with_status_and_events() {
    use common::cluster::TestCluster;
    use flagstaff_client::provider::ProviderEvent;
    use std::sync::{Arc, Mutex};

    let c = TestCluster::start(1, |_| {}).await;
    assert_eq!(c.put(1, "/v1/namespaces/checkout", json!({})).await.0, 200);
    assert_eq!(
        c.put(1, "/v1/namespaces/checkout/flags/f", bool_flag("off"))
            .await
            .0,
        200
    );
    let client = Client::builder("checkout", common::cluster::TOKEN)
        .endpoint(c.node(1).api.clone())
        .build()
        .unwrap();
    let provider =
        FlagstaffProvider::new(client.clone()).with_init_timeout(Duration::from_secs(20));
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    provider.on_provider_event(move |e, flags| ev.lock().unwrap().push((e, flags.to_vec())));

    let mut api = own_api();
    api.set_provider(provider).await; // waits for fresh data, as asked
    let of = api.create_client();
    assert_eq!(client.status(), flagstaff_client::Status::Ready);
    let d = of.get_bool_details("f", None, None).await.unwrap();
    assert!(!d.value);
    assert_eq!(
        d.flag_metadata.values.get("flagstaff.source"),
        Some(&FlagMetadataValue::String("network".into()))
    );

    // The first data counted as a change too; look only at what the write causes.
    events.lock().unwrap().clear();
    assert_eq!(
        c.put(1, "/v1/namespaces/checkout/flags/f", bool_flag("on"))
            .await
            .0,
        200
    );
    common::wait_until(
        "PROVIDER_CONFIGURATION_CHANGED for f",
        Duration::from_secs(20),
        || {
            events.lock().unwrap().iter().any(|(e, flags)| {
                *e == ProviderEvent::ConfigurationChanged && flags == &["f".to_string()]
            })
        },
    )
    .await;
    assert!(of.get_bool_value("f", None, None).await.unwrap());
    c.shutdown().await;
}
