//! The console's pages: namespaces, flags (list, editor, kill switch, preview, history),
//! segments, SDK keys and the cluster. Each handler reads through the API, renders a template,
//! and on a write follows the API's answer: success → redirect (303), 412 → the conflict page,
//! invalid → the editor with every fault, anything else → the error shown.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::api::{seg, Answer};
use super::diff::json_diff;
use super::forms::{pretty, FlagForm, FormFault, SEMVER_OPS, VALUE_TYPES};
use super::{api_error_page, error_page, render, Signed, SignedForm, Ui};

pub fn routes() -> Router<Ui> {
    Router::new()
        .route("/ui/namespaces", get(namespaces).post(create_namespace))
        .route("/ui/ns/{ns}", get(namespace_home))
        .route("/ui/ns/{ns}/flags", get(flags))
        .route("/ui/ns/{ns}/new-flag", get(new_flag).post(save_new_flag))
        .route("/ui/ns/{ns}/flags/{key}", get(edit_flag).post(save_flag))
        .route(
            "/ui/ns/{ns}/flags/{key}/state",
            get(confirm_state).post(set_state),
        )
        .route(
            "/ui/ns/{ns}/{kind}/{key}/delete",
            get(confirm_delete_page).post(delete),
        )
        .route("/ui/ns/{ns}/flags/{key}/reapply", post(reapply_flag))
        .route(
            "/ui/ns/{ns}/flags/{key}/preview",
            get(preview_page).post(preview),
        )
        .route("/ui/ns/{ns}/flags/{key}/history", get(history))
        .route("/ui/ns/{ns}/validate", post(validate))
        .route("/ui/ns/{ns}/segments", get(segments))
        .route(
            "/ui/ns/{ns}/new-segment",
            get(new_segment).post(save_new_segment),
        )
        .route(
            "/ui/ns/{ns}/segments/{key}",
            get(edit_segment).post(save_segment),
        )
        .route("/ui/ns/{ns}/segments/{key}/reapply", post(reapply_segment))
        .route("/ui/ns/{ns}/keys", get(keys).post(create_key))
        .route(
            "/ui/ns/{ns}/keys/{name}/revoke",
            get(confirm_revoke).post(revoke_key),
        )
        .route("/ui/cluster", get(cluster))
        .route("/ui/cluster/members", get(cluster_members))
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The API path of a flag or segment (`kind` is `flag` or `segment`).
fn item_uri(ns: &str, kind: &str, key: &str) -> String {
    format!("/v1/namespaces/{}/{kind}s/{}", seg(ns), seg(key))
}

fn flag_uri(ns: &str, key: &str) -> String {
    item_uri(ns, "flag", key)
}

fn segment_uri(ns: &str, key: &str) -> String {
    item_uri(ns, "segment", key)
}

fn if_match(version: &str) -> (&'static str, String) {
    if version.is_empty() {
        ("if-none-match", "*".to_string())
    } else {
        ("if-match", format!("\"{version}\""))
    }
}

fn faults_of(answer: &Answer) -> Vec<FormFault> {
    answer
        .faults()
        .into_iter()
        .map(|(path, message)| FormFault { path, message })
        .collect()
}

fn validation_faults(faults: Vec<flagstaff_flags::Fault>) -> Vec<FormFault> {
    faults
        .into_iter()
        .map(|f| FormFault {
            path: f.path,
            message: f.message,
        })
        .collect()
}

// ---- namespaces

async fn namespaces(State(ui): State<Ui>, s: Signed) -> Response {
    let a = s.api.get("/v1/namespaces").await;
    if !a.ok() {
        return api_error_page(&ui, &s, &a);
    }
    render(
        &ui,
        StatusCode::OK,
        "namespaces.html",
        Some(&s),
        json!({"title": "Namespaces", "namespaces": a.body["namespaces"], "revision": a.body["revision"]}),
    )
}

async fn create_namespace(State(ui): State<Ui>, f: SignedForm) -> Response {
    let name = f.field("name").trim().to_string();
    let body = json!({"description": f.field("description").trim()});
    let a = f
        .signed
        .api
        .call(
            Method::PUT,
            &format!("/v1/namespaces/{}", seg(&name)),
            Some(&body),
            &[("if-none-match", "*".into())],
        )
        .await;
    if a.ok() {
        return see_other(&format!("/ui/ns/{}/flags", seg(&name)));
    }
    let list = f.signed.api.get("/v1/namespaces").await;
    let message = if a.status == StatusCode::PRECONDITION_FAILED {
        format!("namespace {name:?} already exists")
    } else {
        a.message()
    };
    render(
        &ui,
        a.status,
        "namespaces.html",
        Some(&f.signed),
        json!({
            "title": "Namespaces", "namespaces": list.body["namespaces"], "message": message,
            "name": name, "description": body["description"],
        }),
    )
}

async fn namespace_home(Path(ns): Path<String>) -> Response {
    see_other(&format!("/ui/ns/{}/flags", seg(&ns)))
}

// ---- flag list

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
}

async fn flags(
    State(ui): State<Ui>,
    s: Signed,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let a = s
        .api
        .get(&format!("/v1/namespaces/{}/flags", seg(&ns)))
        .await;
    if !a.ok() {
        return api_error_page(&ui, &s, &a);
    }
    let all = a.body["flags"].as_array().cloned().unwrap_or_default();
    let mut tags: Vec<String> = all
        .iter()
        .flat_map(|f| {
            f["definition"]["tags"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    tags.sort();
    tags.dedup();
    let needle = q.q.trim().to_lowercase();
    let shown: Vec<&Value> = all
        .iter()
        .filter(|f| {
            let d = &f["definition"];
            let text_ok = needle.is_empty()
                || f["key"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(&needle)
                || d["description"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(&needle);
            let tag_ok = q.tag.is_empty()
                || d["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x.as_str() == Some(q.tag.as_str())));
            text_ok && tag_ok
        })
        .collect();
    render(
        &ui,
        StatusCode::OK,
        "flags.html",
        Some(&s),
        json!({
            "title": format!("Flags in {ns}"), "ns": ns, "flags": shown, "total": all.len(),
            "tags": tags, "q": q.q, "tag": q.tag, "revision": a.body["revision"],
        }),
    )
}

// ---- flag editor

/// The editor page for `form`, with faults or a message.
/// What an editor page shows besides the form: its status, the faults and a message.
struct Outcome<'a> {
    status: StatusCode,
    faults: &'a [FormFault],
    message: Option<String>,
}

impl<'a> Outcome<'a> {
    /// A freshly loaded editor.
    fn fresh() -> Outcome<'a> {
        Outcome::note("")
    }

    /// A 200 with a message (none when empty).
    fn note(message: &str) -> Outcome<'a> {
        Outcome {
            status: StatusCode::OK,
            faults: &[],
            message: (!message.is_empty()).then(|| message.to_string()),
        }
    }

    fn faults(status: StatusCode, faults: &'a [FormFault]) -> Outcome<'a> {
        Outcome {
            status,
            faults,
            message: None,
        }
    }
}

fn editor(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    form: &FlagForm,
    is_new: bool,
    current: Option<&Value>,
    outcome: Outcome,
) -> Response {
    let Outcome {
        status,
        faults,
        message,
    } = outcome;
    let mut form = form.clone();
    // Two empty rows, so a variant can be added without JavaScript.
    for _ in 0..2 {
        form.variants.push(Default::default());
    }
    let title = if is_new {
        "New flag".to_string()
    } else {
        format!("Flag {}", form.key)
    };
    render(
        ui,
        status,
        "flag_edit.html",
        Some(s),
        json!({
            "title": title, "ns": ns, "form": form, "is_new": is_new, "faults": faults,
            "message": message, "current": current, "value_types": VALUE_TYPES, "semver_ops": SEMVER_OPS,
        }),
    )
}

async fn new_flag(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
    editor(
        &ui,
        &s,
        &ns,
        &FlagForm::from_definition("", None, None),
        true,
        None,
        Outcome::fresh(),
    )
}

async fn edit_flag(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
) -> Response {
    let a = s.api.get(&flag_uri(&ns, &key)).await;
    if !a.ok() {
        return api_error_page(&ui, &s, &a);
    }
    let form = FlagForm::from_definition(
        &key,
        a.body["version"].as_u64(),
        Some(&a.body["definition"]),
    );
    editor(&ui, &s, &ns, &form, false, Some(&a.body), Outcome::fresh())
}

async fn save_new_flag(State(ui): State<Ui>, Path(ns): Path<String>, f: SignedForm) -> Response {
    let form = FlagForm::from_pairs(&f.fields);
    save_flag_form(&ui, &f.signed, &ns, form, true).await
}

async fn save_flag(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let mut form = FlagForm::from_pairs(&f.fields);
    form.key = key;
    save_flag_form(&ui, &f.signed, &ns, form, false).await
}

/// The form's definition, validated as the API would: every fault with its path.
fn checked_flag(form: &FlagForm) -> Result<Value, Vec<FormFault>> {
    let def = form.to_definition()?;
    flagstaff_flags::validate_flag(&def).map_err(validation_faults)?;
    Ok(def)
}

async fn save_flag_form(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    mut form: FlagForm,
    is_new: bool,
) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let checked = match form.action.as_str() {
        "build" => Some(
            form.apply_builder()
                .map(|()| "Targeting replaced by the rule builder's rule; not saved yet."),
        ),
        "validate" => Some(checked_flag(&form).map(|_| "The definition is valid; not saved yet.")),
        _ => None,
    };
    let show = |outcome: Outcome| editor(ui, s, ns, &form, is_new, None, outcome);
    match checked {
        Some(Ok(note)) => return show(Outcome::note(note)),
        Some(Err(faults)) => return show(Outcome::faults(bad, &faults)),
        None => {}
    }
    if is_new && form.key.is_empty() {
        let faults = [FormFault {
            path: "key".into(),
            message: "give the flag a key".into(),
        }];
        return show(Outcome::faults(bad, &faults));
    }
    let def = match checked_flag(&form) {
        Ok(d) => d,
        Err(faults) => return show(Outcome::faults(bad, &faults)),
    };
    let uri = flag_uri(ns, &form.key);
    let a = s
        .api
        .call(Method::PUT, &uri, Some(&def), &[if_match(&form.version)])
        .await;
    if a.ok() {
        return see_other(&format!(
            "/ui/ns/{}/flags/{}?saved={}",
            seg(ns),
            seg(&form.key),
            a.body["version"]
        ));
    }
    if a.status == StatusCode::PRECONDITION_FAILED {
        return conflict(ui, s, ns, "flag", &form.key, &def).await;
    }
    let faults = faults_of(&a);
    let message = faults.is_empty().then(|| a.message());
    show(Outcome {
        status: a.status,
        faults: &faults,
        message,
    })
}

/// Someone else changed (or created) the item since the editor loaded it: their version next
/// to this edit, with a diff, and the choice to save this edit over theirs or to edit it again.
async fn conflict(ui: &Ui, s: &Signed, ns: &str, kind: &str, key: &str, mine: &Value) -> Response {
    let uri = item_uri(ns, kind, key);
    let theirs = s.api.get(&uri).await;
    let (theirs_def, version) = if theirs.ok() {
        (
            Some(theirs.body["definition"].clone()),
            theirs.body["version"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        )
    } else {
        // Deleted meanwhile: saving again creates it.
        (None, String::new())
    };
    render(
        ui,
        StatusCode::CONFLICT,
        "conflict.html",
        Some(s),
        json!({
            "title": format!("Conflicting edit of {key}"), "ns": ns, "kind": kind, "key": key,
            "theirs": theirs.ok().then_some(&theirs.body), "theirs_json": theirs_def.as_ref().map(pretty),
            "mine_json": pretty(mine), "version": version,
            "diff": json_diff(theirs_def.as_ref(), Some(mine)),
        }),
    )
}

async fn reapply_flag(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let draft: Value = match serde_json::from_str(f.field("draft")) {
        Ok(v) => v,
        Err(e) => {
            return error_page(
                &ui,
                Some(&f.signed),
                StatusCode::BAD_REQUEST,
                &format!("draft: not valid JSON: {e}"),
            )
        }
    };
    let mut form = FlagForm::from_definition(&key, None, Some(&draft));
    form.version = f.field("version").to_string();
    if f.field("action") == "edit" {
        let message =
            "Your edit, on top of their version: change it as needed and save.".to_string();
        return editor(
            &ui,
            &f.signed,
            &ns,
            &form,
            false,
            None,
            Outcome::note(&message),
        );
    }
    form.action = "save".into();
    save_flag_form(&ui, &f.signed, &ns, form, false).await
}

/// Live validation (htmx): the faults of the posted editor form, as a fragment.
async fn validate(State(ui): State<Ui>, f: SignedForm) -> Response {
    let result = if f.field("kind") == "segment" {
        checked_segment(f.field("rule")).map(|_| ())
    } else {
        checked_flag(&FlagForm::from_pairs(&f.fields)).map(|_| ())
    };
    let faults = result.err().unwrap_or_default();
    render(
        &ui,
        StatusCode::OK,
        "faults.html",
        Some(&f.signed),
        json!({"faults": faults, "live": true}),
    )
}

// ---- kill switch and delete

#[derive(serde::Deserialize)]
struct StateQuery {
    #[serde(default)]
    to: String,
}

fn target_state(to: &str) -> Option<&'static str> {
    match to {
        "ENABLED" => Some("ENABLED"),
        "DISABLED" => Some("DISABLED"),
        _ => None,
    }
}

async fn confirm_state(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
    Query(q): Query<StateQuery>,
) -> Response {
    state_page(&ui, &s, StatusCode::OK, &ns, &key, &q.to, None).await
}

async fn state_page(
    ui: &Ui,
    s: &Signed,
    status: StatusCode,
    ns: &str,
    key: &str,
    to: &str,
    message: Option<String>,
) -> Response {
    let Some(to) = target_state(to) else {
        return error_page(
            ui,
            Some(s),
            StatusCode::BAD_REQUEST,
            "to: must be ENABLED or DISABLED",
        );
    };
    let a = s.api.get(&flag_uri(ns, key)).await;
    if !a.ok() {
        return api_error_page(ui, s, &a);
    }
    let verb = if to == "DISABLED" {
        "Disable"
    } else {
        "Enable"
    };
    render(
        ui,
        status,
        "confirm.html",
        Some(s),
        json!({
            "title": format!("{verb} {key}?"), "ns": ns, "item": a.body, "message": message,
            "question": format!("{verb} flag {key} in {ns}? Applications see the change within their staleness bound."),
            "action": format!("/ui/ns/{}/flags/{}/state", seg(ns), seg(key)),
            "fields": {"to": to, "version": a.body["version"].to_string()},
            "button": verb, "danger": to == "DISABLED",
            "back": format!("/ui/ns/{}/flags", seg(ns)),
        }),
    )
}

async fn set_state(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let Some(to) = target_state(f.field("to")) else {
        return error_page(
            &ui,
            Some(&f.signed),
            StatusCode::BAD_REQUEST,
            "to: must be ENABLED or DISABLED",
        );
    };
    let a = f
        .signed
        .api
        .call(
            Method::PATCH,
            &flag_uri(&ns, &key),
            Some(&json!({"state": to})),
            &[if_match(f.field("version"))],
        )
        .await;
    if a.ok() {
        return see_other(&format!("/ui/ns/{}/flags?changed={}", seg(&ns), seg(&key)));
    }
    if a.status == StatusCode::PRECONDITION_FAILED {
        let message = "Someone changed this flag after you opened this page; here it is as it is now. Confirm again if you still want to.".to_string();
        return state_page(
            &ui,
            &f.signed,
            StatusCode::CONFLICT,
            &ns,
            &key,
            to,
            Some(message),
        )
        .await;
    }
    api_error_page(&ui, &f.signed, &a)
}

async fn confirm_delete(ui: &Ui, s: &Signed, ns: &str, kind: &str, key: &str) -> Response {
    let uri = item_uri(ns, kind, key);
    let a = s.api.get(&uri).await;
    if !a.ok() {
        return api_error_page(ui, s, &a);
    }
    render(
        ui,
        StatusCode::OK,
        "confirm.html",
        Some(s),
        json!({
            "title": format!("Delete {key}?"), "ns": ns, "item": a.body,
            "question": format!("Delete {kind} {key} from {ns}? Applications fall back to their defaults for it."),
            "action": format!("/ui/ns/{}/{kind}s/{}/delete", seg(ns), seg(key)),
            "fields": {"version": a.body["version"].to_string()},
            "button": "Delete", "danger": true, "back": format!("/ui/ns/{}/{kind}s", seg(ns)),
        }),
    )
}

async fn delete_item(ui: &Ui, f: &SignedForm, ns: &str, kind: &str, key: &str) -> Response {
    let uri = item_uri(ns, kind, key);
    let a = f
        .signed
        .api
        .call(Method::DELETE, &uri, None, &[if_match(f.field("version"))])
        .await;
    if a.ok() {
        return see_other(&format!("/ui/ns/{}/{kind}s", seg(ns)));
    }
    api_error_page(ui, &f.signed, &a)
}

/// `flags` or `segments` in a console path, as the item kind it names.
fn kind_of(plural: &str) -> Option<&'static str> {
    match plural {
        "flags" => Some("flag"),
        "segments" => Some("segment"),
        _ => None,
    }
}

async fn confirm_delete_page(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, kind, key)): Path<(String, String, String)>,
) -> Response {
    match kind_of(&kind) {
        Some(kind) => confirm_delete(&ui, &s, &ns, kind, &key).await,
        None => error_page(&ui, Some(&s), StatusCode::NOT_FOUND, "no such page"),
    }
}

async fn delete(
    State(ui): State<Ui>,
    Path((ns, kind, key)): Path<(String, String, String)>,
    f: SignedForm,
) -> Response {
    match kind_of(&kind) {
        Some(kind) => delete_item(&ui, &f, &ns, kind, &key).await,
        None => error_page(&ui, Some(&f.signed), StatusCode::NOT_FOUND, "no such page"),
    }
}

// ---- evaluation preview

async fn preview_page(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
) -> Response {
    let ctx = "{\n  \"email\": \"someone@example.com\"\n}";
    render(
        &ui,
        StatusCode::OK,
        "preview.html",
        Some(&s),
        json!({
            "title": format!("Preview {key}"), "ns": ns, "key": key, "context": ctx, "targeting_key": "user-1",
        }),
    )
}

/// Evaluates the saved flag for a context through OFREP, as an SDK would.
async fn preview(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let (context_text, targeting_key) = (f.field("context"), f.field("targeting_key").trim());
    let mut faults = Vec::new();
    let mut context = match context_text.trim() {
        "" => json!({}),
        text => serde_json::from_str::<Value>(text).unwrap_or_else(|e| {
            faults.push(FormFault {
                path: "context".into(),
                message: format!("not valid JSON: {e}"),
            });
            Value::Null
        }),
    };
    if faults.is_empty() && !context.is_object() {
        faults.push(FormFault {
            path: "context".into(),
            message: "must be a JSON object of attributes".into(),
        });
    }
    let mut result = Value::Null;
    if faults.is_empty() {
        if !targeting_key.is_empty() {
            context["targetingKey"] = json!(targeting_key);
        }
        let uri = format!(
            "/ofrep/v1/evaluate/flags/{}?namespace={}",
            seg(&key),
            seg(&ns)
        );
        let a = f
            .signed
            .api
            .call(Method::POST, &uri, Some(&json!({"context": context})), &[])
            .await;
        result = json!({
            "ok": a.ok(), "status": a.status.as_u16(),
            "value": a.body.get("value").map(pretty), "variant": a.body["variant"],
            "reason": a.body["reason"], "error_code": a.body["errorCode"], "error_details": a.body["errorDetails"],
        });
    }
    let status = if faults.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    render(
        &ui,
        status,
        "preview.html",
        Some(&f.signed),
        json!({
            "title": format!("Preview {key}"), "ns": ns, "key": key, "context": context_text,
            "targeting_key": targeting_key, "faults": faults, "result": result,
        }),
    )
}

// ---- history

async fn history(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
) -> Response {
    let a = s
        .api
        .get(&format!(
            "/v1/namespaces/{}/history?key={}&limit=50",
            seg(&ns),
            seg(&key)
        ))
        .await;
    if !a.ok() {
        return api_error_page(&ui, &s, &a);
    }
    let changes: Vec<Value> = a.body["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["items"].as_array().into_iter().flatten().filter(|i| i["kind"] == "flag" && i["key"] == key.as_str()).map(move |i| {
                let (before, after) = (i.get("before").filter(|v| !v.is_null()), i.get("after").filter(|v| !v.is_null()));
                let what = match (before, after) {
                    (None, Some(_)) => "created",
                    (Some(_), None) => "deleted",
                    _ => "changed",
                };
                json!({"revision": c["revision"], "at_ms": c["at_ms"], "actor": c["actor"], "what": what, "diff": json_diff(before, after)})
            })
        })
        .collect();
    render(
        &ui,
        StatusCode::OK,
        "history.html",
        Some(&s),
        json!({
            "title": format!("History of {key}"), "ns": ns, "key": key, "changes": changes,
            "more": !a.body["next_before"].is_null(),
        }),
    )
}

// ---- segments

async fn segments(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
    let a = s
        .api
        .get(&format!("/v1/namespaces/{}/segments", seg(&ns)))
        .await;
    if !a.ok() {
        return api_error_page(&ui, &s, &a);
    }
    render(
        &ui,
        StatusCode::OK,
        "segments.html",
        Some(&s),
        json!({
            "title": format!("Segments in {ns}"), "ns": ns, "segments": a.body["segments"],
        }),
    )
}

fn checked_segment(text: &str) -> Result<Value, Vec<FormFault>> {
    let rule: Value = serde_json::from_str(text).map_err(|e| {
        vec![FormFault {
            path: "rule".into(),
            message: format!("not valid JSON: {e}"),
        }]
    })?;
    flagstaff_flags::validate_segment(&rule).map_err(validation_faults)?;
    Ok(rule)
}

struct SegmentForm<'a> {
    key: &'a str,
    version: &'a str,
    rule: &'a str,
}

fn segment_editor(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    f: &SegmentForm,
    is_new: bool,
    outcome: Outcome,
) -> Response {
    let Outcome {
        status,
        faults,
        message,
    } = outcome;
    let title = if is_new {
        "New segment".to_string()
    } else {
        format!("Segment {}", f.key)
    };
    render(
        ui,
        status,
        "segment_edit.html",
        Some(s),
        json!({
            "title": title, "ns": ns, "key": f.key, "version": f.version, "rule": f.rule,
            "is_new": is_new, "faults": faults, "message": message,
        }),
    )
}

async fn new_segment(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
    let rule = "{\"ends_with\": [{\"var\": \"email\"}, \"@example.com\"]}";
    segment_editor(
        &ui,
        &s,
        &ns,
        &SegmentForm {
            key: "",
            version: "",
            rule,
        },
        true,
        Outcome::fresh(),
    )
}

async fn edit_segment(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
) -> Response {
    let a = s.api.get(&segment_uri(&ns, &key)).await;
    if !a.ok() {
        return api_error_page(&ui, &s, &a);
    }
    let (rule, version) = (pretty(&a.body["definition"]), a.body["version"].to_string());
    segment_editor(
        &ui,
        &s,
        &ns,
        &SegmentForm {
            key: &key,
            version: &version,
            rule: &rule,
        },
        false,
        Outcome::fresh(),
    )
}

async fn save_segment_form(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    form: SegmentForm<'_>,
    is_new: bool,
) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    if form.key.is_empty() {
        let faults = [FormFault {
            path: "key".into(),
            message: "give the segment a key".into(),
        }];
        return segment_editor(ui, s, ns, &form, is_new, Outcome::faults(bad, &faults));
    }
    let rule = match checked_segment(form.rule) {
        Ok(r) => r,
        Err(faults) => {
            return segment_editor(ui, s, ns, &form, is_new, Outcome::faults(bad, &faults))
        }
    };
    let a = s
        .api
        .call(
            Method::PUT,
            &segment_uri(ns, form.key),
            Some(&rule),
            &[if_match(form.version)],
        )
        .await;
    if a.ok() {
        return see_other(&format!("/ui/ns/{}/segments", seg(ns)));
    }
    if a.status == StatusCode::PRECONDITION_FAILED {
        return conflict(ui, s, ns, "segment", form.key, &rule).await;
    }
    let faults = faults_of(&a);
    let message = faults.is_empty().then(|| a.message());
    segment_editor(
        ui,
        s,
        ns,
        &form,
        is_new,
        Outcome {
            status: a.status,
            faults: &faults,
            message,
        },
    )
}

async fn save_new_segment(State(ui): State<Ui>, Path(ns): Path<String>, f: SignedForm) -> Response {
    let form = SegmentForm {
        key: f.field("key").trim(),
        version: "",
        rule: f.field("rule"),
    };
    save_segment_form(&ui, &f.signed, &ns, form, true).await
}

async fn save_segment(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let form = SegmentForm {
        key: &key,
        version: f.field("version").trim(),
        rule: f.field("rule"),
    };
    save_segment_form(&ui, &f.signed, &ns, form, false).await
}

async fn reapply_segment(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let form = SegmentForm {
        key: &key,
        version: f.field("version").trim(),
        rule: f.field("draft"),
    };
    if f.field("action") == "edit" {
        let message =
            "Your edit, on top of their version: change it as needed and save.".to_string();
        return segment_editor(&ui, &f.signed, &ns, &form, false, Outcome::note(&message));
    }
    save_segment_form(&ui, &f.signed, &ns, form, false).await
}

// ---- SDK keys

async fn keys_page(
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

async fn keys(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
    keys_page(&ui, &s, StatusCode::OK, &ns, None, None).await
}

async fn create_key(State(ui): State<Ui>, Path(ns): Path<String>, f: SignedForm) -> Response {
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

async fn confirm_revoke(
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

async fn revoke_key(
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

// ---- cluster

async fn cluster(State(ui): State<Ui>, s: Signed) -> Response {
    let view = cluster_view(&ui, &s).await;
    render(
        &ui,
        StatusCode::OK,
        "cluster.html",
        Some(&s),
        json!({"title": "Cluster", "view": view}),
    )
}

async fn cluster_members(State(ui): State<Ui>, s: Signed) -> Response {
    let view = cluster_view(&ui, &s).await;
    render(
        &ui,
        StatusCode::OK,
        "cluster_members.html",
        Some(&s),
        json!({"view": view}),
    )
}

/// This node's view of the cluster (`/v1/cluster`), and each member's health as probed from
/// here: `/readyz` answered ready, not ready, or not at all (with when it last answered).
async fn cluster_view(ui: &Ui, s: &Signed) -> Value {
    let a = s.api.get("/v1/cluster").await;
    let mut status = a.body.clone();
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let probes = members.iter().map(|m| {
        let url = format!("{}/readyz", m["api_addr"].as_str().unwrap_or_default());
        let http = ui.http.clone();
        async move {
            match http.get(url).send().await {
                Ok(r) if r.status().is_success() => "ready",
                Ok(_) => "not ready",
                Err(_) => "unreachable",
            }
        }
    });
    let health = futures::future::join_all(probes).await;
    let now = Instant::now();
    let mut contacts = ui.contacts.lock().unwrap_or_else(|p| p.into_inner());
    let rows: Vec<Value> = members
        .into_iter()
        .zip(health)
        .map(|(mut m, h)| {
            let id = m["id"].as_u64().unwrap_or(0);
            if h != "unreachable" {
                contacts.insert(id, now);
            }
            m["health"] = json!(h);
            m["last_contact_ms"] = json!(contacts
                .get(&id)
                .map(|t| now.duration_since(*t).as_millis() as u64));
            m
        })
        .collect();
    status["members"] = json!(rows);
    status["ok"] = json!(a.ok());
    status["message"] = json!((!a.ok()).then(|| a.message()));
    status
}
