//! Segment pages: the list and the rule editor.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::*;

pub(super) async fn segments(State(ui): State<Ui>, s: Signed, Path(ns): Path<String>) -> Response {
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

pub(super) struct SegmentForm<'a> {
    key: &'a str,
    version: &'a str,
    rule: &'a str,
}

pub(super) fn segment_editor(
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
        ..
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

pub(super) async fn new_segment(
    State(ui): State<Ui>,
    s: Signed,
    Path(ns): Path<String>,
) -> Response {
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

pub(super) async fn edit_segment(
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

pub(super) async fn save_segment_form(
    ui: &Ui,
    s: &Signed,
    ns: &str,
    form: SegmentForm<'_>,
    is_new: bool,
) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let show = |outcome: Outcome| segment_editor(ui, s, ns, &form, is_new, outcome);
    if form.key.is_empty() {
        return show(Outcome::faults(bad, &missing_key("segment")));
    }
    let rule = match checked_segment(form.rule) {
        Ok(r) => r,
        Err(faults) => return show(Outcome::faults(bad, &faults)),
    };
    let save = Save {
        ns,
        kind: "segment",
        key: form.key,
        version: form.version,
        definition: &rule,
    };
    let done = |_: &Answer| format!("/ui/ns/{}/segments", seg(ns));
    put_from_editor(ui, s, save, &segment_uri(ns, form.key), done, show).await
}

pub(super) async fn save_new_segment(
    State(ui): State<Ui>,
    Path(ns): Path<String>,
    f: SignedForm,
) -> Response {
    let form = SegmentForm {
        key: f.field("key").trim(),
        version: "",
        rule: f.field("rule"),
    };
    save_segment_form(&ui, &f.signed, &ns, form, true).await
}

pub(super) async fn save_segment(
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

pub(super) async fn reapply_segment(
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
            "This is your edit. Saving it replaces their version: open theirs in another tab to carry over what you want to keep.".to_string();
        return segment_editor(&ui, &f.signed, &ns, &form, false, Outcome::note(&message));
    }
    save_segment_form(&ui, &f.signed, &ns, form, false).await
}
