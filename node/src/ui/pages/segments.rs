//! Segment pages: the list and the rule editor.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use flagstaff_api::admin::{ItemInfo, SegmentList};
use serde_json::{json, Value};

use super::*;

pub(super) async fn segments(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
    let uri = format!("/v1/namespaces/{}/segments", seg(&ns));
    read_page(
        &ui,
        &s,
        StatusCode::OK,
        &uri,
        "segments.html",
        |l: SegmentList| json!({"title": format!("Segments in {ns}"), "ns": ns, "segments": l.segments}),
    )
    .await
}

pub(super) fn checked_segment(text: &str) -> Result<Value, Vec<FormFault>> {
    let rule: Value = serde_json::from_str(text).map_err(|e| {
        vec![FormFault {
            path: "rule".into(),
            message: format!("not valid JSON: {e}"),
        }]
    })?;
    flagstaff_flags::validate_segment(&rule).map_err(validation_faults)?;
    Ok(rule)
}

/// The segment editor's fields: the key, the version it was loaded at and the rule as text.
pub(super) struct SegmentForm {
    key: String,
    version: String,
    rule: String,
}

impl EditorForm for SegmentForm {
    fn posted(f: &SignedForm, key: Option<String>) -> SegmentForm {
        let (key, version) = match key {
            Some(key) => (key, f.field("version").trim().to_string()),
            None => (f.field("key").trim().to_string(), String::new()),
        };
        SegmentForm {
            key,
            version,
            rule: f.field("rule").to_string(),
        }
    }

    fn save(self, at: Editing<'_>) -> impl Future<Output = Response> + Send {
        save_segment_form(at.ui, at.s, at.ns, self, at.is_new)
    }
}

pub(super) fn segment_editor(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    f: &SegmentForm,
    is_new: bool,
    outcome: Outcome,
) -> Response {
    let title = editor_title("segment", &f.key, is_new);
    let fields = json!({
        "ns": ns, "key": f.key, "version": f.version, "rule": f.rule, "is_new": is_new,
    });
    editor_page(ui, s, outcome, title, "segment_edit.html", fields)
}

pub(super) async fn new_segment(
    State(ui): State<Ui>,
    s: Signed,
    Path(ns): Path<String>,
) -> Response {
    let rule = "{\"ends_with\": [{\"var\": \"email\"}, \"@example.com\"]}";
    let form = SegmentForm {
        key: String::new(),
        version: String::new(),
        rule: rule.to_string(),
    };
    segment_editor(&ui, &s, &ns, &form, true, Outcome::fresh())
}

pub(super) async fn edit_segment(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, key)): Path<(String, String)>,
) -> Response {
    let item = match s.api.read::<ItemInfo>(&segment_uri(&ns, &key)).await {
        Ok(item) => item,
        Err(a) => return api_error_page(&ui, &s, &a),
    };
    let form = SegmentForm {
        key,
        version: item.version.to_string(),
        rule: pretty(&item.definition),
    };
    segment_editor(&ui, &s, &ns, &form, false, Outcome::fresh())
}

pub(super) async fn save_segment_form(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    form: SegmentForm,
    is_new: bool,
) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let show = |outcome: Outcome| segment_editor(ui, s, ns, &form, is_new, outcome);
    if form.key.is_empty() {
        return show(Outcome::faults(bad, &missing_key("segment")));
    }
    let rule = match checked_segment(&form.rule) {
        Ok(r) => r,
        Err(faults) => return show(Outcome::faults(bad, &faults)),
    };
    let save = Save {
        ns,
        kind: "segment",
        key: &form.key,
        version: &form.version,
        definition: &rule,
    };
    let done = |_: &ItemWritten| format!("/ui/ns/{}/segments", seg(ns));
    put_from_editor(ui, s, save, &segment_uri(ns, &form.key), done, show).await
}

pub(super) async fn reapply_segment(
    State(ui): State<Ui>,
    Path((ns, key)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let form = SegmentForm {
        key,
        version: f.field("version").trim().to_string(),
        rule: f.field("draft").to_string(),
    };
    if f.field("action") == "edit" {
        let message =
            "This is your edit. Saving it replaces their version: open theirs in another tab to carry over what you want to keep.".to_string();
        return segment_editor(&ui, &f.signed, &ns, &form, false, Outcome::note(&message));
    }
    save_segment_form(&ui, &f.signed, &ns, form, false).await
}
