//! The cluster page, refreshed by htmx every 2 s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::*;

pub(super) async fn cluster(State(ui): State<Ui>, s: Signed) -> Response {
    let view = cluster_view(&ui, &s).await;
    render(
        &ui,
        StatusCode::OK,
        "cluster.html",
        Some(&s),
        json!({"title": "Cluster", "view": view}),
    )
}

pub(super) async fn cluster_members(State(ui): State<Ui>, s: Signed) -> Response {
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
pub(super) async fn cluster_view(ui: &Ui, s: &Signed) -> Value {
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
