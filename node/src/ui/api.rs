//! The console's way into the `/v1` API: each call goes through the same router, handlers,
//! validation, consistency rules and leader forwarding as a call from `curl`, on behalf of the
//! signed-in admin ([`ConsoleActor`]), without a network hop.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::extract::ConsoleActor;

/// An answer of the API: its status and JSON body (`Null` when it had none).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The error message of a failed call (`error.message`), or the status.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the node answered {}", self.status))
    }

    /// `error.faults` of an invalid definition, as (path, message) pairs.
    pub fn faults(&self) -> Vec<(String, String)> {
        self.body["error"]["faults"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| {
                        let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
                        (text("path"), text("message"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Calls the API router as one admin.
#[derive(Clone)]
pub struct Api {
    router: Router,
    actor: String,
}

/// A request header the console sets: `If-Match` and friends.
pub type Header<'a> = (&'a str, String);

impl Api {
    pub fn new(router: Router, actor: String) -> Api {
        Api { router, actor }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
        headers: &[Header<'_>],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = match req
            .extension(ConsoleActor::new(self.actor.clone()))
            .body(body)
        {
            Ok(r) => r,
            Err(e) => return local_error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
            Ok(bytes) if bytes.is_empty() => Answer {
                status,
                body: Value::Null,
            },
            Ok(bytes) => Answer {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            },
            Err(e) => local_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None, &[]).await
    }
}

fn local_error(status: StatusCode, message: String) -> Answer {
    Answer {
        status,
        body: serde_json::json!({"error": {"code": "CONSOLE", "message": message}}),
    }
}

/// A path segment, percent-encoded (names are checked by the API; this keeps odd input a 400
/// from the API instead of a malformed URI).
pub fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
