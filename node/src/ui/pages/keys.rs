//! SDK key pages: list, create (the secret shown once) and revoke.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::*;

pub(super) async fn keys_page(
    ui: &Ui,
    s: &Signed,
    status: StatusCode,
    ns: &str,
    created: Option<&Value>,
    message: Option<String>,
) -> Response {
    let a = s
        .api
        .get(&format!("/v1/namespaces/{}/sdk-keys", seg(ns)))
        .await;
    if !a.ok() {
        return api_error_page(ui, s, &a);
    }
    render(
        ui,
        status,
        "keys.html",
        Some(s),
        json!({
            "title": format!("SDK keys of {ns}"), "ns": ns, "keys": a.body["sdk_keys"], "created": created, "message": message,
        }),
    )
}

pub(super) async fn keys(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
    keys_page(&ui, &s, StatusCode::OK, &ns, None, None).await
}

pub(super) async fn create_key(
    State(ui): State<Ui>,
    Path(ns): Path<String>,
    f: SignedForm,
) -> Response {
    let body = json!({"name": f.field("name").trim()});
    let a = f
        .signed
        .api
        .call(
            Method::POST,
            &format!("/v1/namespaces/{}/sdk-keys", seg(&ns)),
            Some(&body),
            &[],
        )
        .await;
    if a.ok() {
        // The secret is shown on this answer only; it is not a redirect, so reloading does not
        // show it again.
        return keys_page(&ui, &f.signed, StatusCode::OK, &ns, Some(&a.body), None).await;
    }
    keys_page(&ui, &f.signed, a.status, &ns, None, Some(a.message())).await
}

pub(super) async fn confirm_revoke(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    render(
        &ui,
        StatusCode::OK,
        "confirm.html",
        Some(&s),
        json!({
            "title": format!("Revoke {name}?"), "ns": ns,
            "question": format!("Revoke SDK key {name} of {ns}? Applications using it get 401 and their open streams close."),
            "action": format!("/ui/ns/{}/keys/{}/revoke", seg(&ns), seg(&name)),
            "fields": {}, "button": "Revoke", "danger": true, "back": format!("/ui/ns/{}/keys", seg(&ns)),
        }),
    )
}

pub(super) async fn revoke_key(
    State(ui): State<Ui>,
    Path((ns, name)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let a = f
        .signed
        .api
        .call(
            Method::DELETE,
            &format!("/v1/namespaces/{}/sdk-keys/{}", seg(&ns), seg(&name)),
            None,
            &[],
        )
        .await;
    if a.ok() {
        return see_other(&format!("/ui/ns/{}/keys", seg(&ns)));
    }
    keys_page(&ui, &f.signed, a.status, &ns, None, Some(a.message())).await
}
