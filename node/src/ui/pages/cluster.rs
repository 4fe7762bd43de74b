//! The cluster page, refreshed by htmx every 2 s.

use std::time::Duration;

use axum::extract::State;

use crate::peer::{MemberView, PATH_STATUS};
use axum::http::StatusCode;
use axum::response::Response;
use flagstaff_api::cluster::ClusterStatus;
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

/// This node's view of the cluster (`/v1/cluster`), and each member's own view of itself asked
/// over the peer listener (role, term, applied index, revision, ready), with when this node last
/// got an answer from it.
pub(super) async fn cluster_view(ui: &Ui, s: &Signed) -> Value {
    let (mut status, members, failure) = match s.api.read::<ClusterStatus>("/v1/cluster").await {
        Ok(mut c) => {
            let members = std::mem::take(&mut c.members);
            (json!(c), members, None)
        }
        Err(a) => (json!({}), Vec::new(), Some(a.message())),
    };
    let node = &ui.node;
    let probes = members.iter().map(|m| {
        let asked = node
            .peers
            .call::<_, MemberView>(&m.peer_addr, PATH_STATUS, &(), PROBE_TIMEOUT);
        async move { asked.await.ok() }
    });
    let views = futures::future::join_all(probes).await;
    let now = Instant::now();
    let mut contacts = ui.contacts.lock().unwrap_or_else(|p| p.into_inner());
    let rows: Vec<Value> = members
        .into_iter()
        .zip(views)
        .map(|(member, view)| {
            let id = member.id;
            let mut m = json!(member);
            m["health"] = json!(match &view {
                Some(v) if v.ready => "ready",
                Some(_) => "not ready",
                None => "unreachable",
            });
            if let Some(v) = view {
                contacts.insert(id, now);
                m["own"] = json!({
                    "state": v.state, "term": v.term, "leader": v.leader,
                    "applied_index": v.applied_index, "revision": v.revision,
                });
            }
            m["last_contact_ms"] = json!(contacts
                .get(&id)
                .map(|t| now.duration_since(*t).as_millis() as u64));
            m
        })
        .collect();
    status["members"] = json!(rows);
    status["ok"] = json!(failure.is_none());
    status["message"] = json!(failure);
    status
}

/// How long the page waits for a member's answer before calling it unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
