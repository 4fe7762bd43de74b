//! The OpenAPI document: generated from the routed handlers, complete, self-consistent, and
//! served by a real node. (`tests/openapi/run.sh` fuzzes a live cluster against it.)

use std::collections::BTreeSet;

use flagstaff_test_cluster::{TestCluster, TOKEN};
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(&flagstaff_node::api::openapi_json()).expect("the document is JSON")
}

/// Every route the client listener serves, as `METHOD path`.
const ROUTES: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/cluster/backup",
    "GET /v1/openapi.json",
    "GET /v1/cluster",
    "POST /v1/cluster/init",
    "POST /v1/cluster/learners",
    "POST /v1/cluster/voters",
    "DELETE /v1/cluster/members/{id}",
    "GET /v1/namespaces",
    "GET /v1/namespaces/{ns}",
    "PUT /v1/namespaces/{ns}",
    "DELETE /v1/namespaces/{ns}",
    "GET /v1/namespaces/{ns}/flags",
    "GET /v1/namespaces/{ns}/flags/{key}",
    "PUT /v1/namespaces/{ns}/flags/{key}",
    "PATCH /v1/namespaces/{ns}/flags/{key}",
    "DELETE /v1/namespaces/{ns}/flags/{key}",
    "GET /v1/namespaces/{ns}/segments",
    "GET /v1/namespaces/{ns}/segments/{key}",
    "PUT /v1/namespaces/{ns}/segments/{key}",
    "DELETE /v1/namespaces/{ns}/segments/{key}",
    "GET /v1/namespaces/{ns}/snapshot",
    "GET /v1/namespaces/{ns}/watch",
    "GET /v1/namespaces/{ns}/history",
    "GET /v1/namespaces/{ns}/flagd",
    "PUT /v1/namespaces/{ns}/flagd",
    "GET /v1/namespaces/{ns}/sdk-keys",
    "POST /v1/namespaces/{ns}/sdk-keys",
    "DELETE /v1/namespaces/{ns}/sdk-keys/{name}",
    "POST /v1/namespaces/{ns}/events",
    "GET /v1/namespaces/{ns}/experiments",
    "GET /v1/namespaces/{ns}/experiments/{key}",
    "GET /v1/admin-tokens",
    "POST /v1/admin-tokens",
    "DELETE /v1/admin-tokens/{name}",
    "POST /ofrep/v1/evaluate/flags",
    "POST /ofrep/v1/evaluate/flags/{key}",
];

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((method.to_uppercase(), path.clone(), op));
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_served_routes() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<String> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    let expected: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(documented, expected);
}

#[test]
fn every_operation_documents_success_and_its_errors() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.contains_key("200"),
            "{method} {path}: no 200 response"
        );
        assert!(
            op["operationId"].is_string(),
            "{method} {path}: no operationId"
        );
        let authenticated = path.starts_with("/v1/") && path != "/v1/openapi.json";
        if authenticated || path.starts_with("/ofrep/") {
            for status in ["400", "401", "403", "404", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: {status} not documented"
                );
            }
            assert_eq!(
                op["security"][0]["bearer"],
                serde_json::json!([]),
                "{method} {path}: no bearer security"
            );
        }
        if authenticated && method != "GET" {
            for status in ["409", "412", "413", "422", "504"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: {status} not documented"
                );
            }
        }
    }
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_schema_reference_resolves() {
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 30, "expected many references, got {found:?}");
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_the_document_without_credentials() {
    let c = TestCluster::start(1, |_| {}).await;
    let r = c
        .http
        .get(format!("{}/v1/openapi.json", c.node(1).api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served: Value = r.json().await.unwrap();
    assert_eq!(served, document());
    // The document's error shape is what the node answers.
    let r = c
        .http
        .get(format!("{}/v1/namespaces/nope", c.node(1).api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    c.shutdown().await;
}
