//! The console's pages: namespaces, flags (list, editor, kill switch, preview, history),
//! segments, SDK keys and the cluster. Each handler reads through the API, renders a template,
//! and on a write follows the API's answer: success → redirect (303), 412 → the conflict page,
//! invalid → the editor with every fault, anything else → the error shown.

use std::future::Future;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use flagstaff_api::admin::{ItemInfo, ItemWritten, NamespaceList};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

mod cluster;
mod experiments;
mod flags;
mod keys;
mod segments;

use cluster::*;
use experiments::*;
use flags::*;
use keys::*;
use segments::*;

use super::api::{seg, Answer};
use super::diff::json_diff;
use super::forms::{pretty, FlagForm, FormFault, SEMVER_OPS, VALUE_TYPES};
use super::{api_error_page, error_page, render, Signed, SignedForm, Ui};

pub fn routes() -> Router<Ui> {
    Router::new()
        .route("/ui/namespaces", get(namespaces).post(create_namespace))
        .route("/ui/ns/{ns}", get(namespace_home))
        .route("/ui/ns/{ns}/flags", get(flags))
        .route(
            "/ui/ns/{ns}/new-flag",
            get(new_flag).post(save_new::<FlagForm>),
        )
        .route(
            "/ui/ns/{ns}/flags/{key}",
            get(edit_flag).post(save_edited::<FlagForm>),
        )
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
            get(new_segment).post(save_new::<SegmentForm>),
        )
        .route(
            "/ui/ns/{ns}/segments/{key}",
            get(edit_segment).post(save_edited::<SegmentForm>),
        )
        .route("/ui/ns/{ns}/segments/{key}/reapply", post(reapply_segment))
        .route("/ui/ns/{ns}/keys", get(keys).post(create_key))
        .route(
            "/ui/ns/{ns}/keys/{name}/revoke",
            get(confirm_revoke).post(revoke_key),
        )
        .route("/ui/ns/{ns}/experiments", get(experiments))
        .route("/ui/ns/{ns}/experiments/{flag}", get(experiment))
        .route("/ui/ns/{ns}/experiments/{flag}/ship", post(ship))
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
        .map(|f| FormFault {
            path: f.path,
            message: f.message,
        })
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

/// A page of one API read: `GET uri` read as `T`, rendered into `template` with the context
/// `ctx` makes of it. A failed read shows its error page instead.
async fn read_page<T: DeserializeOwned>(
    ui: &Ui,
    s: &Signed,
    status: StatusCode,
    uri: &str,
    template: &str,
    ctx: impl FnOnce(T) -> Value,
) -> Response {
    match s.api.read::<T>(uri).await {
        Ok(answer) => render(ui, status, template, Some(s), ctx(answer)),
        Err(a) => api_error_page(ui, s, &a),
    }
}

// ---- namespaces

async fn namespaces(State(ui): State<Ui>, s: Signed) -> Response {
    read_page(
        &ui,
        &s,
        StatusCode::OK,
        "/v1/namespaces",
        "namespaces.html",
        |l: NamespaceList| {
            json!({"title": "Namespaces", "namespaces": l.namespaces, "revision": l.revision})
        },
    )
    .await
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
    let list = f.signed.api.read::<NamespaceList>("/v1/namespaces").await;
    let (status, message) = if a.status == StatusCode::PRECONDITION_FAILED {
        (
            StatusCode::CONFLICT,
            format!("namespace {name:?} already exists"),
        )
    } else {
        (a.status, a.message())
    };
    render(
        &ui,
        status,
        "namespaces.html",
        Some(&f.signed),
        json!({
            "title": "Namespaces", "namespaces": list.ok().map(|l| l.namespaces), "message": message,
            "name": name, "description": body["description"],
        }),
    )
}

async fn namespace_home(Path(ns): Path<String>) -> Response {
    see_other(&format!("/ui/ns/{}/flags", seg(&ns)))
}

// ---- shared by flags and segments: saves, editor outcomes, conflicts, live validation, delete

/// The form of a flag or segment editor, as posted.
trait EditorForm: Sized + Send {
    /// The posted form of a new item (`key` is `None`: the key is a field) or of the existing
    /// item `key` (the key is the page's, the version the one it was loaded at).
    fn posted(f: &SignedForm, key: Option<String>) -> Self;

    /// Checks the form and saves it through the API: the editor again with what is wrong, the
    /// conflict page, or a redirect once saved.
    fn save(self, at: Editing<'_>) -> impl Future<Output = Response> + Send;
}

/// Where an editor's form is saved: by whom, in which namespace, a new item or not.
struct Editing<'a> {
    ui: &'a Ui,
    s: &'a Signed,
    ns: &'a str,
    is_new: bool,
}

/// `POST` of a new item's editor.
async fn save_new<F: EditorForm>(
    State(ui): State<Ui>,
    Path(ns): Path<String>,
    f: SignedForm,
) -> Response {
    let at = Editing {
        ui: &ui,
        s: &f.signed,
        ns: &ns,
        is_new: true,
    };
    F::posted(&f, None).save(at).await
}

/// `POST` of an existing item's editor.
async fn save_edited<F: EditorForm>(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let form = F::posted(&f, Some(key));
    let at = Editing {
        ui: &ui,
        s: &f.signed,
        ns: &ns,
        is_new: false,
    };
    form.save(at).await
}

/// What an editor page shows besides the form: its status, the faults and a message.
struct Outcome<'a> {
    status: StatusCode,
    faults: &'a [FormFault],
    message: Option<String>,
    /// After a conflict: their current definition, shown beside the editor.
    theirs: Option<String>,
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
            theirs: None,
        }
    }

    /// Faults found before anything was sent to the API.
    fn faults(status: StatusCode, faults: &'a [FormFault]) -> Outcome<'a> {
        Outcome {
            status,
            faults,
            message: None,
            theirs: None,
        }
    }

    /// A write the API refused (`faults` from [`faults_of`] its answer): its faults, or its
    /// message when it gave none.
    fn refused(answer: &Answer, faults: &'a [FormFault]) -> Outcome<'a> {
        Outcome {
            message: faults.is_empty().then(|| answer.message()),
            ..Outcome::faults(answer.status, faults)
        }
    }
}

/// An editor page: `template` with `fields` and `title`, and the outcome's status, faults,
/// message and (after a conflict) their definition.
fn editor_page(
    ui: &Ui,
    s: &Signed,
    outcome: Outcome,
    title: String,
    template: &str,
    mut fields: Value,
) -> Response {
    fields["title"] = json!(title);
    fields["faults"] = json!(outcome.faults);
    fields["message"] = json!(outcome.message);
    fields["theirs_json"] = json!(outcome.theirs);
    render(ui, outcome.status, template, Some(s), fields)
}

/// An editor's title: "New flag" for a new one, else "Flag f".
fn editor_title(noun: &str, key: &str, is_new: bool) -> String {
    if is_new {
        return format!("New {noun}");
    }
    let mut letters = noun.chars();
    let first = letters.next().map(|c| c.to_ascii_uppercase());
    format!("{}{} {key}", first.unwrap_or_default(), letters.as_str())
}

/// The fault of an editor saved without a key.
fn missing_key(kind: &str) -> [FormFault; 1] {
    [FormFault {
        path: "key".into(),
        message: format!("give the {kind} a key"),
    }]
}

/// A checked definition from a flag or segment editor, on its way to the API.
struct Save<'a> {
    ns: &'a str,
    kind: &'a str,
    key: &'a str,
    /// The version the editor was loaded at (empty: a new item, created only if absent).
    version: &'a str,
    definition: &'a Value,
}

/// The end of both editors' saves: `PUT` the definition to `uri` with the editor's version as
/// its condition. Saved: a redirect to `done(answer)`. Someone else's write came first (412):
/// the conflict page. Refused otherwise: the editor again (`show`) with the API's faults.
async fn put_from_editor(
    ui: &Ui,
    s: &Signed,
    save: Save<'_>,
    uri: &str,
    done: impl FnOnce(&ItemWritten) -> String,
    show: impl FnOnce(Outcome) -> Response,
) -> Response {
    let condition = [if_match(save.version)];
    let a = s
        .api
        .call(Method::PUT, uri, Some(save.definition), &condition)
        .await;
    if a.ok() {
        return match a.parse::<ItemWritten>() {
            Ok(written) => see_other(&done(&written)),
            Err(e) => api_error_page(ui, s, &e),
        };
    }
    if a.status == StatusCode::PRECONDITION_FAILED {
        return conflict(ui, s, save.ns, save.kind, save.key, save.definition).await;
    }
    let faults = faults_of(&a);
    show(Outcome::refused(&a, &faults))
}

/// Someone else changed (or created) the item since the editor loaded it: their version next
/// to this edit, with a diff, and the choice to save this edit over theirs or to edit it again.
async fn conflict(ui: &Ui, s: &Signed, ns: &str, kind: &str, key: &str, mine: &Value) -> Response {
    let theirs = match s.api.read::<ItemInfo>(&item_uri(ns, kind, key)).await {
        Ok(item) => Some(item),
        // Deleted meanwhile: saving again creates it.
        Err(a) if a.status == StatusCode::NOT_FOUND => None,
        Err(a) => return api_error_page(ui, s, &a),
    };
    let version = theirs
        .as_ref()
        .map(|t| t.version.to_string())
        .unwrap_or_default();
    let theirs_def = theirs.as_ref().map(|t| &t.definition);
    render(
        ui,
        StatusCode::CONFLICT,
        "conflict.html",
        Some(s),
        json!({
            "title": format!("Conflicting edit of {key}"), "ns": ns, "kind": kind, "key": key,
            "theirs": theirs, "theirs_json": theirs_def.map(pretty),
            "mine_json": pretty(mine), "version": version,
            "diff": json_diff(theirs_def, Some(mine)),
        }),
    )
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

async fn confirm_delete(ui: &Ui, s: &Signed, ns: &str, kind: &str, key: &str) -> Response {
    let uri = item_uri(ns, kind, key);
    read_page(ui, s, StatusCode::OK, &uri, "confirm.html", |item: ItemInfo| {
        json!({
            "title": format!("Delete {key}?"), "ns": ns,
            "question": format!("Delete {kind} {key} from {ns}? Applications fall back to their defaults for it."),
            "action": format!("/ui/ns/{}/{kind}s/{}/delete", seg(ns), seg(key)),
            "fields": {"version": item.version.to_string()}, "item": item,
            "button": "Delete", "danger": true, "back": format!("/ui/ns/{}/{kind}s", seg(ns)),
        })
    })
    .await
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
