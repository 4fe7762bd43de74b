//! The client listener's HTTP API: one router per concern, merged in [`documented_routes`]
//! (the console is added on top of it in `server.rs::client_router`).

pub mod admin;
pub mod cluster;
pub mod experiments;
pub mod extract;
pub mod flagd;
pub mod history;
pub mod keys;
pub mod ofrep;
pub mod openapi;
pub mod sdk;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::node::Node;

pub const REVISION_HEADER: &str = "flagstaff-revision";
pub const STALENESS_HEADER: &str = "flagstaff-staleness-ms";

pub fn revision_header(resp: &mut Response, revision: u64) {
    resp.headers_mut().insert(
        HeaderName::from_static(REVISION_HEADER),
        HeaderValue::from(revision),
    );
}

pub fn staleness_header(resp: &mut Response, staleness_ms: u64) {
    resp.headers_mut().insert(
        HeaderName::from_static(STALENESS_HEADER),
        HeaderValue::from(staleness_ms),
    );
}

/// A change's or item's kind as the API names it.
pub fn item_kind_of(kind: flagstaff_raft_store::ChangeKind) -> flagstaff_api::admin::ItemKind {
    use flagstaff_api::admin::ItemKind;
    use flagstaff_raft_store::ChangeKind;
    match kind {
        ChangeKind::Namespace => ItemKind::Namespace,
        ChangeKind::Flag => ItemKind::Flag,
        ChangeKind::Segment => ItemKind::Segment,
    }
}

/// Every documented route of the client listener, with its OpenAPI description.
pub fn documented_routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(admin::router())
        .merge(cluster::router())
        .merge(sdk::router())
        .merge(keys::router())
        .merge(history::router())
        .merge(flagd::router())
        .merge(ofrep::router())
        .merge(experiments::router())
        .routes(utoipa_axum::routes!(openapi::document))
}

/// The OpenAPI document of the client listener (what `/v1/openapi.json` serves).
pub fn openapi_json() -> String {
    let (_, api) = documented_routes().split_for_parts();
    openapi::document_json(api)
}

/// The `--listen-metrics` listener: `GET /metrics` and nothing else.
pub fn metrics_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(cluster::metrics))
        .fallback(|| async { ApiError::NotFound("this listener serves /metrics only".into()) })
        .with_state(node)
}

/// Adds `Flagstaff-Cluster`, `Flagstaff-Node`, `Flagstaff-Leader` and (unless the handler set
/// the revision its answer reflects) `Flagstaff-Revision` to every response.
pub async fn flagstaff_headers(
    State(node): State<Arc<Node>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&node.cluster_id) {
        h.insert(HeaderName::from_static("flagstaff-cluster"), v);
    }
    h.insert(
        HeaderName::from_static("flagstaff-node"),
        HeaderValue::from(node.id),
    );
    if let Some(leader) = node.raft.metrics().borrow().current_leader {
        h.insert(
            HeaderName::from_static("flagstaff-leader"),
            HeaderValue::from(leader),
        );
    }
    if !h.contains_key(REVISION_HEADER) {
        h.insert(
            HeaderName::from_static(REVISION_HEADER),
            HeaderValue::from(node.state.applied().revision),
        );
    }
    resp
}
