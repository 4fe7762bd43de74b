//! Flag pages: the list with search and tag filter, the editor with the rule builder, the kill
//! switch, the evaluation preview and the history.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use flagstaff_api::admin::{FlagList, ItemInfo, ItemKind};
use flagstaff_api::history::{HistoryItem, HistoryPage};
use flagstaff_api::ofrep::{OfrepError, OfrepSuccess};
use serde_json::{json, Value};

use super::*;

// ---- flag list

#[derive(serde::Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
}

pub(super) async fn flags(
    State(ui): State<Ui>,
    s: Signed,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let uri = format!("/v1/namespaces/{}/flags", seg(&ns));
    read_page(
        &ui,
        &s,
        StatusCode::OK,
        &uri,
        "flags.html",
        |l: FlagList| {
            // A definition stored with flagd semantics may hold anything under these names: what
            // is not a list of strings or a string is no tag and no description.
            let tags_of = |f: &ItemInfo| -> Vec<String> {
                let tags = f.definition["tags"].as_array().into_iter().flatten();
                tags.filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            };
            let mut tags: Vec<String> = l.flags.iter().flat_map(tags_of).collect();
            tags.sort();
            tags.dedup();
            let needle = q.q.trim().to_lowercase();
            let matches = |f: &&ItemInfo| {
                let description = f.definition["description"].as_str().unwrap_or("");
                let text_ok = needle.is_empty()
                    || f.key.to_lowercase().contains(&needle)
                    || description.to_lowercase().contains(&needle);
                text_ok && (q.tag.is_empty() || tags_of(f).contains(&q.tag))
            };
            let shown: Vec<&ItemInfo> = l.flags.iter().filter(matches).collect();
            json!({
                "title": format!("Flags in {ns}"), "ns": ns, "flags": shown, "total": l.flags.len(),
                "tags": tags, "q": q.q, "tag": q.tag, "revision": l.revision,
            })
        },
    )
    .await
}

/// The editor page for `form`, with faults or a message.
pub(super) fn editor(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    form: &FlagForm,
    is_new: bool,
    current: Option<&ItemInfo>,
    outcome: Outcome,
) -> Response {
    let mut form = form.clone();
    // Two empty rows, so a variant can be added without JavaScript.
    for _ in 0..2 {
        form.variants.push(Default::default());
    }
    let title = editor_title("flag", &form.key, is_new);
    let fields = json!({
        "ns": ns, "form": form, "is_new": is_new, "current": current,
        "value_types": VALUE_TYPES, "semver_ops": SEMVER_OPS,
    });
    editor_page(ui, s, outcome, title, "flag_edit.html", fields)
}

pub(super) async fn new_flag(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
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

#[derive(serde::Deserialize)]
pub(super) struct SavedQuery {
    /// Set by the redirect after a save: the version it wrote.
    saved: Option<u64>,
}

pub(super) async fn edit_flag(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
    Query(q): Query<SavedQuery>,
) -> Response {
    let item = match s.api.read::<ItemInfo>(&flag_uri(&ns, &key)).await {
        Ok(item) => item,
        Err(a) => return api_error_page(&ui, &s, &a),
    };
    let mut form = FlagForm::from_definition(&key, Some(item.version), Some(&item.definition));
    let mut note = q
        .saved
        .map(|v| format!("Saved as version {v}."))
        .unwrap_or_default();
    // A flag stored as flagd would (imported, or written with flagd semantics): say what in it
    // Flagstaff would refuse, and keep it savable as it is.
    let def = &item.definition;
    if flagstaff_flags::validate_flag(def).is_err() {
        if let Ok(warnings) = flagstaff_flags::validate_flag_as_flagd(def) {
            form.flagd_semantics = true;
            note = format!("{note} {}", flagd_note(&warnings))
                .trim()
                .to_string();
        }
    }
    let outcome = Outcome::note(&note);
    editor(&ui, &s, &ns, &form, false, Some(&item), outcome)
}

impl EditorForm for FlagForm {
    fn posted(f: &SignedForm, key: Option<String>) -> FlagForm {
        let mut form = FlagForm::from_pairs(&f.fields);
        if let Some(key) = key {
            form.key = key;
        }
        form
    }

    fn save(self, at: Editing<'_>) -> impl Future<Output = Response> + Send {
        save_flag_form(at.ui, at.s, at.ns, self, at.is_new)
    }
}

/// What a flag stored with flagd semantics holds that Flagstaff refuses by default.
fn flagd_note(warnings: &[flagstaff_flags::Fault]) -> String {
    let list: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    format!(
        "Stored as flagd would, with what Flagstaff refuses by default (each evaluates as in flagd): {}.",
        list.join("; ")
    )
}

/// The form's definition, validated as the API would: every fault with its path; with
/// `flagd_semantics`, as flagd stores it, and the note of what that let through.
pub(super) fn checked_flag(form: &FlagForm) -> Result<(Value, String), Vec<FormFault>> {
    let def = form.to_definition()?;
    if form.flagd_semantics {
        let warnings = flagstaff_flags::validate_flag_as_flagd(&def).map_err(validation_faults)?;
        let note = if warnings.is_empty() {
            String::new()
        } else {
            flagd_note(&warnings)
        };
        return Ok((def, note));
    }
    flagstaff_flags::validate_flag(&def).map_err(validation_faults)?;
    Ok((def, String::new()))
}

pub(super) async fn save_flag_form(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    mut form: FlagForm,
    is_new: bool,
) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let checked =
        match form.action.as_str() {
            "build" => Some(form.apply_builder().map(|()| {
                "Targeting replaced by the rule builder's rule; not saved yet.".to_string()
            })),
            "validate" => Some(checked_flag(&form).map(|(_, flagd)| {
                format!("The definition is valid; not saved yet. {flagd}")
                    .trim()
                    .to_string()
            })),
            _ => None,
        };
    let show = |outcome: Outcome| editor(ui, s, ns, &form, is_new, None, outcome);
    match checked {
        Some(Ok(note)) => return show(Outcome::note(&note)),
        Some(Err(faults)) => return show(Outcome::faults(bad, &faults)),
        None => {}
    }
    if is_new && form.key.is_empty() {
        return show(Outcome::faults(bad, &missing_key("flag")));
    }
    let def = match checked_flag(&form) {
        Ok((d, _)) => d,
        Err(faults) => return show(Outcome::faults(bad, &faults)),
    };
    let mut uri = flag_uri(ns, &form.key);
    if form.flagd_semantics {
        uri.push_str("?flagd_semantics=true");
    }
    let save = Save {
        ns,
        kind: "flag",
        key: &form.key,
        version: &form.version,
        definition: &def,
    };
    let (ns_seg, key_seg) = (seg(ns), seg(&form.key));
    let done = |w: &ItemWritten| format!("/ui/ns/{ns_seg}/flags/{key_seg}?saved={}", w.version);
    put_from_editor(ui, s, save, &uri, done, show).await
}

pub(super) async fn reapply_flag(
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
        // Their version as it is now, shown beside the editor; saving replaces it.
        let theirs = f.signed.api.read::<ItemInfo>(&flag_uri(&ns, &key)).await;
        let current = theirs.as_ref().ok();
        form.version = current.map(|t| t.version.to_string()).unwrap_or_default();
        let outcome = Outcome {
            theirs: current.map(|t| pretty(&t.definition)),
            ..Outcome::note(
                "This is your edit. Saving it replaces their version, shown below: carry over \
                 what you want to keep from it first.",
            )
        };
        return editor(&ui, &f.signed, &ns, &form, false, current, outcome);
    }
    form.action = "save".into();
    save_flag_form(&ui, &f.signed, &ns, form, false).await
}

// ---- kill switch

#[derive(serde::Deserialize)]
pub(super) struct StateQuery {
    #[serde(default)]
    to: String,
}

pub(super) fn target_state(to: &str) -> Option<&'static str> {
    match to {
        "ENABLED" => Some("ENABLED"),
        "DISABLED" => Some("DISABLED"),
        _ => None,
    }
}

pub(super) async fn confirm_state(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
    Query(q): Query<StateQuery>,
) -> Response {
    state_page(&ui, &s, StatusCode::OK, &ns, &key, &q.to, None).await
}

pub(super) async fn state_page(
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
    let verb = if to == "DISABLED" {
        "Disable"
    } else {
        "Enable"
    };
    let uri = flag_uri(ns, key);
    read_page(ui, s, status, &uri, "confirm.html", |item: ItemInfo| {
        json!({
            "title": format!("{verb} {key}?"), "ns": ns, "message": message,
            "question": format!("{verb} flag {key} in {ns}? Applications see the change within their staleness bound."),
            "action": format!("/ui/ns/{}/flags/{}/state", seg(ns), seg(key)),
            "fields": {"to": to, "version": item.version.to_string()}, "item": item,
            "button": verb, "danger": to == "DISABLED",
            "back": format!("/ui/ns/{}/flags", seg(ns)),
        })
    })
    .await
}

pub(super) async fn set_state(
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

// ---- evaluation preview

pub(super) async fn preview_page(
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
pub(super) async fn preview(
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
            "/ofrep/v1/evaluate/flags/{}?namespace={}&consistency=linearizable",
            seg(&key),
            seg(&ns)
        );
        let a = f
            .signed
            .api
            .call(Method::POST, &uri, Some(&json!({"context": context})), &[])
            .await;
        let status = a.status.as_u16();
        result = match (a.ok(), a.parse::<OfrepSuccess>(), a.parse::<OfrepError>()) {
            (true, Ok(r), _) => json!({
                "ok": true, "status": status, "value": r.value.as_ref().map(pretty),
                "variant": r.variant, "reason": r.reason,
            }),
            (false, _, Ok(e)) => json!({
                "ok": false, "status": status, "error_code": e.error_code,
                "error_details": e.error_details,
            }),
            // Neither OFREP answer: an error of the API itself (a bad name, say) or a body
            // that does not read.
            _ => json!({"ok": false, "status": status, "error_details": a.message()}),
        };
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

pub(super) async fn history(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
) -> Response {
    let uri = format!(
        "/v1/namespaces/{}/history?key={}&limit=50",
        seg(&ns),
        seg(&key)
    );
    read_page(
        &ui,
        &s,
        StatusCode::OK,
        &uri,
        "history.html",
        |page: HistoryPage| {
            let changes: Vec<Value> = page
                .changes
                .iter()
                .flat_map(|c| {
                    let this_flag = |i: &&HistoryItem| i.kind == ItemKind::Flag && i.key == key;
                    c.items.iter().filter(this_flag).map(move |i| {
                    let (before, after) = (i.before.as_ref(), i.after.as_ref());
                    let what = match (before, after) {
                        (None, Some(_)) => "created",
                        (Some(_), None) => "deleted",
                        _ => "changed",
                    };
                    json!({
                        "revision": c.revision, "at_ms": c.at_ms, "actor": c.actor, "what": what,
                        "diff": json_diff(before, after),
                    })
                })
                })
                .collect();
            json!({
                "title": format!("History of {key}"), "ns": ns, "key": key, "changes": changes,
                "more": page.next_before.is_some(),
            })
        },
    )
    .await
}
