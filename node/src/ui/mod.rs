//! The web console at `/ui`: server-rendered pages (minijinja templates compiled into the
//! binary) with a little htmx, served by every node.
//!
//! Every read and write goes through the `/v1` API router ([`api::Api`]) as the signed-in admin,
//! so the console has the API's guarantees and nothing of its own: linearizable reads, writes
//! forwarded to the leader, validation with fault paths, `If-Match` on every save.
//!
//! Sessions are signed cookies that every node of the cluster accepts ([`session`]); every POST
//! is checked for its CSRF token by the [`SignedForm`] extractor, so no handler can forget it.

pub mod api;
pub mod diff;
pub mod forms;
mod pages;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;
use serde_json::{json, Value};

use crate::auth::{hash_secret, Caller};
use crate::node::Node;
use api::Api;
use session::{Session, Signer, LOGIN_COOKIE, SESSION_COOKIE};

/// What the console's handlers share.
pub struct Console {
    pub node: Arc<Node>,
    /// The `/v1` API router, called in-process.
    api: Router,
    signer: Signer,
    /// When this node last got an answer from each member (the cluster page).
    contacts: Mutex<HashMap<u64, Instant>>,
}

type Ui = Arc<Console>;

impl Console {
    /// The console is served over HTTPS (the client listener has TLS): its cookies are
    /// `Secure`.
    fn over_tls(&self) -> bool {
        self.node.config.tls.is_some()
    }
}

/// The console's routes, served under `/ui` next to the API.
pub fn router(node: Arc<Node>, api: Router) -> Router {
    let console = Arc::new(Console {
        signer: Signer::new(&node.cluster_id, &node.config.cluster_secret),
        node,
        api,
        contacts: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/namespaces") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/namespaces") }))
        .route("/ui/static/{file}", get(static_file))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .merge(pages::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = [
        (
            "content-security-policy",
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

// ---- templates

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/", $name)))),*]
    };
}

const TEMPLATES: &[(&str, &str)] = templates!(
    "base.html",
    "login.html",
    "error.html",
    "namespaces.html",
    "flags.html",
    "flag_edit.html",
    "faults.html",
    "confirm.html",
    "conflict.html",
    "diff.html",
    "preview.html",
    "history.html",
    "segments.html",
    "segment_edit.html",
    "keys.html",
    "experiments.html",
    "experiment.html",
    "cluster.html",
    "cluster_members.html",
);

static TEMPLATE_ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        // A template that does not parse fails every page test; at run time it renders as an
        // error page instead of taking the node down.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "console template does not parse");
        }
    }
    env.add_filter("time", |ms: u64| format_time_ms(ms));
    env.add_filter("compact", |v: minijinja::Value| {
        serde_json::to_string(&v).unwrap_or_default()
    });
    env
});

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Renders `template` with `ctx` plus what every page shows (who is signed in, this node).
fn render(
    ui: &Console,
    status: StatusCode,
    template: &str,
    signed: Option<&Signed>,
    ctx: Value,
) -> Response {
    let mut ctx = match ctx {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    ctx.insert("node_id".into(), json!(ui.node.id));
    ctx.insert("cluster_id".into(), json!(ui.node.cluster_id));
    if let Some(s) = signed {
        ctx.insert("actor".into(), json!(s.session.actor));
        ctx.insert("csrf".into(), json!(ui.signer.csrf(&s.session.nonce)));
    }
    let html = TEMPLATE_ENV
        .get_template(template)
        .and_then(|t| t.render(minijinja::Value::from_serialize(&ctx)));
    match html {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("console template {template} failed: {e}"),
            )
                .into_response()
        }
    }
}

/// A page that says what went wrong, with the status it came with.
fn error_page(
    ui: &Console,
    signed: Option<&Signed>,
    status: StatusCode,
    message: &str,
) -> Response {
    render(
        ui,
        status,
        "error.html",
        signed,
        json!({"title": status.canonical_reason().unwrap_or("Error"), "status": status.as_u16(), "message": message}),
    )
}

/// An API answer that failed, as a page (its status, or 502 for a success status here).
fn api_error_page(ui: &Console, signed: &Signed, answer: &api::Answer) -> Response {
    let status = if answer.ok() {
        StatusCode::BAD_GATEWAY
    } else {
        answer.status
    };
    error_page(ui, Some(signed), status, &answer.message())
}

// ---- sessions

/// A signed-in admin: the session, and the API as that admin.
pub struct Signed {
    pub session: Session,
    pub api: Api,
}

fn cookie_header(parts: &Parts) -> &str {
    parts
        .headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Where to go after sign-in: only a console path of visible ASCII, never another site.
fn safe_next(next: &str) -> &str {
    let visible = next.bytes().all(|b| b.is_ascii_graphic());
    if visible && next.starts_with("/ui/") && !next.starts_with("/ui//") && !next.contains('\\') {
        next
    } else {
        "/ui/namespaces"
    }
}

impl FromRequestParts<Ui> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Response> {
        let session = session::cookie(cookie_header(parts), SESSION_COOKIE)
            .and_then(|c| ui.signer.verify(c))
            .filter(|s| Caller::admin_credential_valid(&s.actor, &s.credential, &ui.node));
        match session {
            Some(session) => Ok(Signed {
                api: Api::new(ui.api.clone(), session.actor.clone()),
                session,
            }),
            None => {
                // Back to this page after sign-in, if it is one a browser can open.
                let here = match parts.method {
                    Method::GET => parts.uri.path_and_query().map(|p| p.as_str()),
                    _ => None,
                };
                let next: String =
                    form_urlencoded::byte_serialize(safe_next(here.unwrap_or("")).as_bytes())
                        .collect();
                let login = format!("/ui/login?next={next}");
                if parts.headers.contains_key("hx-request") {
                    // An htmx fragment: the whole page goes to sign-in, not the fragment's slot.
                    let mut resp = StatusCode::UNAUTHORIZED.into_response();
                    if let Ok(v) = HeaderValue::from_str(&login) {
                        resp.headers_mut().insert("hx-redirect", v);
                    }
                    return Err(resp);
                }
                Err(Redirect::to(&login).into_response())
            }
        }
    }
}

/// A POST from a signed-in admin with a valid CSRF token (form field `csrf` or header
/// `X-CSRF-Token`) from this origin; the form's fields in order.
pub struct SignedForm {
    pub signed: Signed,
    pub fields: Vec<(String, String)>,
}

impl SignedForm {
    pub fn field(&self, name: &str) -> &str {
        field(&self.fields, name)
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// A cross-origin POST (an `Origin` that is not this host) is refused whatever it carries.
fn same_origin(parts: &Parts) -> bool {
    let Some(origin) = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    // HTTP/1.1 names the host in `Host`, HTTP/2 in the URI's authority.
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

async fn read_fields(ui: &Console, body: Body) -> Option<Vec<(String, String)>> {
    let bytes = axum::body::to_bytes(body, ui.node.config.max_body_bytes)
        .await
        .ok()?;
    Some(form_urlencoded::parse(&bytes).into_owned().collect())
}

impl FromRequest<Ui> for SignedForm {
    type Rejection = Response;

    async fn from_request(req: Request, ui: &Ui) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, ui).await?;
        let refuse = |message: &str| error_page(ui, Some(&signed), StatusCode::FORBIDDEN, message);
        if !same_origin(&parts) {
            return Err(refuse("this form was posted from another site"));
        }
        let Some(fields) = read_fields(ui, body).await else {
            return Err(error_page(
                ui,
                Some(&signed),
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is larger than the node accepts",
            ));
        };
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = match field(&fields, "csrf") {
            "" => header_token,
            t => t,
        };
        if !ui.signer.check_csrf(&signed.session.nonce, token) {
            return Err(refuse(
                "the form's security token is missing or belongs to another session; reload the page and try again",
            ));
        }
        Ok(SignedForm { signed, fields })
    }
}

fn with_cookie(mut resp: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(serde::Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

async fn login_page(
    State(ui): State<Ui>,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    login_form(&ui, StatusCode::OK, safe_next(&q.next), None)
}

/// The sign-in form, with a fresh nonce cookie its CSRF token is bound to.
fn login_form(ui: &Console, status: StatusCode, next: &str, message: Option<&str>) -> Response {
    let nonce = session::random_nonce();
    let page = render(
        ui,
        status,
        "login.html",
        None,
        json!({"title": "Sign in", "next": next, "message": message, "login_csrf": ui.signer.csrf(&nonce)}),
    );
    with_cookie(
        page,
        session::set_cookie(
            LOGIN_COOKIE,
            &nonce,
            Duration::from_secs(3600),
            ui.over_tls(),
        ),
    )
}

async fn login(State(ui): State<Ui>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let nonce = session::cookie(cookie_header(&parts), LOGIN_COOKIE)
        .unwrap_or("")
        .to_string();
    let Some(fields) = read_fields(&ui, body).await else {
        return login_form(
            &ui,
            StatusCode::PAYLOAD_TOO_LARGE,
            "/ui/namespaces",
            Some("the form is too large"),
        );
    };
    let next = safe_next(field(&fields, "next")).to_string();
    if !same_origin(&parts)
        || nonce.is_empty()
        || !ui.signer.check_csrf(&nonce, field(&fields, "csrf"))
    {
        return login_form(
            &ui,
            StatusCode::FORBIDDEN,
            &next,
            Some("the sign-in form expired; please try again"),
        );
    }
    let token = field(&fields, "token").trim();
    let Some(actor) = Caller::admin_name(token, &ui.node) else {
        return login_form(
            &ui,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("that is not an admin token of this cluster"),
        );
    };
    tracing::info!(actor, "console sign-in");
    let resp = Redirect::to(&next).into_response();
    let resp = with_cookie(
        resp,
        session::set_cookie(
            SESSION_COOKIE,
            &ui.signer.issue(&actor, &hash_secret(token)),
            session::SESSION_TTL,
            ui.over_tls(),
        ),
    );
    with_cookie(
        resp,
        session::set_cookie(LOGIN_COOKIE, "", Duration::ZERO, ui.over_tls()),
    )
}

async fn logout(State(ui): State<Ui>, form: SignedForm) -> Response {
    tracing::info!(actor = form.signed.session.actor, "console sign-out");
    with_cookie(
        Redirect::to("/ui/login").into_response(),
        session::set_cookie(SESSION_COOKIE, "", Duration::ZERO, ui.over_tls()),
    )
}

// ---- static files

const CSS: &str = include_str!("../../static/console.css");
const HTMX: &str = include_str!("../../static/htmx-2.0.8.min.js");
const HTMX_LICENSE: &str = include_str!("../../static/htmx-LICENSE.txt");

async fn static_file(Path(file): Path<String>) -> Response {
    let (body, kind, cache) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8", "max-age=300"),
        "htmx-2.0.8.min.js" => (
            HTMX,
            "text/javascript; charset=utf-8",
            "max-age=31536000, immutable",
        ),
        "htmx-LICENSE.txt" => (HTMX_LICENSE, "text/plain; charset=utf-8", "max-age=86400"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, cache)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_civil_utc() {
        assert_eq!(format_time_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time_ms(1_796_123_045_000), "2026-12-01 11:04:05 UTC");
    }

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            TEMPLATE_ENV
                .get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn sign_in_only_returns_to_console_pages() {
        assert_eq!(safe_next("/ui/ns/a/flags"), "/ui/ns/a/flags");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil",
            "/v1/cluster",
            "",
        ] {
            assert_eq!(safe_next(bad), "/ui/namespaces", "{bad}");
        }
    }
}
