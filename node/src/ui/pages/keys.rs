//! SDK key pages: list, create (the secret shown once) and revoke.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use flagstaff_api::keys::{SdkKeyList, SecretCreated};
use serde_json::json;

use super::*;

pub(super) async fn keys_page(
    ui: &Ui,
    s: &Signed,
    status: StatusCode,
    ns: &str,
    created: Option<&SecretCreated>,
    message: Option<String>,
) -> Response {
    let uri = format!("/v1/namespaces/{}/sdk-keys", seg(ns));
    read_page(ui, s, status, &uri, "keys.html", |l: SdkKeyList| {
        json!({
            "title": format!("SDK keys of {ns}"), "ns": ns, "keys": l.sdk_keys, "created": created,
            "message": message,
        })
    })
    .await
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
        return match a.parse::<SecretCreated>() {
            Ok(created) => {
                keys_page(&ui, &f.signed, StatusCode::OK, &ns, Some(&created), None).await
            }
            Err(e) => api_error_page(&ui, &f.signed, &e),
        };
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
