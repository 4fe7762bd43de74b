//! The console's way into the `/v1` API: each call goes through the same router, handlers,
//! validation, consistency rules and leader forwarding as a call from `curl`, on behalf of the
//! signed-in admin ([`ConsoleActor`]), without a network hop. Answers are read as the API
//! crate's types (`flagstaff_api`), the same ones the node writes them from.

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use flagstaff_api::error::{ErrorBody, ErrorDetail, FaultBody};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::extract::ConsoleActor;

/// An answer of the API: its status and body (empty when it had none).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    body: Bytes,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The body as the API type `T`. A body that is not one becomes an answer of its own, a
    /// 502 that says so: the console shows it as the node's fault, never as data.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Answer> {
        serde_json::from_slice(&self.body).map_err(|e| {
            local_error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the node's answer ({}) did not read as expected: {e}",
                    self.status
                ),
            )
        })
    }

    /// The error of a failed call, when its body is the API's error body.
    fn error(&self) -> Option<ErrorDetail> {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .map(|b| b.error)
    }

    /// The error message of a failed call (`error.message`), or the status.
    pub fn message(&self) -> String {
        self.error()
            .map(|e| e.message)
            .unwrap_or_else(|| format!("the node answered {}", self.status))
    }

    /// `error.faults` of an invalid definition.
    pub fn faults(&self) -> Vec<FaultBody> {
        self.error().and_then(|e| e.faults).unwrap_or_default()
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
            Ok(body) => Answer { status, body },
            Err(e) => local_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None, &[]).await
    }

    /// `GET uri`, its success body read as `T`; a failed call as its answer.
    pub async fn read<T: DeserializeOwned>(&self, uri: &str) -> Result<T, Answer> {
        let a = self.get(uri).await;
        if !a.ok() {
            return Err(a);
        }
        a.parse()
    }
}

/// An answer the console makes itself, in the API's error body.
fn local_error(status: StatusCode, message: String) -> Answer {
    let error = ErrorBody {
        error: ErrorDetail {
            code: "CONSOLE".into(),
            message,
            faults: None,
            current_version: None,
        },
    };
    Answer {
        status,
        body: serde_json::to_vec(&error).unwrap_or_default().into(),
    }
}

/// A path segment, percent-encoded (names are checked by the API; this keeps odd input a 400
/// from the API instead of a malformed URI).
pub fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flagstaff_api::admin::ItemWritten;

    fn answer(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn an_answer_reads_as_its_type_or_as_the_nodes_fault() {
        let written = answer(
            StatusCode::OK,
            r#"{"namespace":"a","key":"f","version":3,"revision":9}"#,
        );
        assert_eq!(
            written.parse::<ItemWritten>().map(|w| w.version).ok(),
            Some(3)
        );
        // A success whose body is not the type: a 502 of the console's own, saying why.
        let odd = answer(StatusCode::OK, r#"{"namespace":"a"}"#);
        let refused = odd.parse::<ItemWritten>().err();
        assert_eq!(
            refused.as_ref().map(|a| a.status),
            Some(StatusCode::BAD_GATEWAY)
        );
        let message = refused.map(|a| a.message()).unwrap_or_default();
        assert!(message.contains("missing field `key`"), "{message}");
    }

    #[test]
    fn a_refusal_gives_its_message_and_faults() {
        let invalid = answer(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"INVALID","message":"2 faults","faults":[{"path":"variants","message":"empty"}]}}"#,
        );
        assert_eq!(invalid.message(), "2 faults");
        let faults = invalid.faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(
            (faults[0].path.as_str(), faults[0].message.as_str()),
            ("variants", "empty")
        );
        // No error body (a proxy's page, say): the status stands in for the message.
        let bare = answer(StatusCode::SERVICE_UNAVAILABLE, "<html>");
        assert!(bare.message().contains("503"), "{}", bare.message());
        assert!(bare.faults().is_empty());
    }
}
