//! Taking a connection over from hyper, for a response that streams for as long as the client
//! stays (the watch stream): the listener reads the head of a connection's first request
//! itself ([`first_request`]); when it asks for a path the listener intercepts, the app answers
//! it, and an answer carrying a [`TakeOver`] gets the bare socket once its head is written.
//! Everything else reaches hyper unchanged, the bytes already read replayed first
//! ([`Replayed`]).
//!
//! A taken-over response has no length and no chunking: its body runs until the connection
//! closes (`Connection: close`), so whoever holds the socket writes frames to it as they are,
//! with no task, buffer or encoder of hyper's per connection. Over TLS, the socket comes with
//! its TLS session ([`Socket::Tls`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Version};
use axum::Router;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tower::ServiceExt;

/// Which request paths (without the query) the listener answers itself when they open a
/// connection, so that their answer may take the connection over.
pub type Intercept = fn(&str) -> bool;

/// A connection: a TCP socket, or a TLS session over one.
pub enum Socket {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(s) => s.is_write_vectored(),
            Socket::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What takes a connection over: the socket, after the response head, and the listener's
/// permit for it (the connection counts against the listener's cap as long as it is open).
type HandOver = Box<
    dyn FnOnce(Socket, OwnedSemaphorePermit) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

/// A response extension: "give me the connection". On a connection hyper serves (a request
/// that did not open its connection, or a TLS one) it is ignored and the body is served as
/// usual, so a handler that sets it must give a body that works either way.
#[derive(Clone)]
pub struct TakeOver(Arc<Mutex<Option<HandOver>>>);

impl TakeOver {
    /// `hand_over` gets the socket once the response head is written.
    pub fn new<F, Fut>(hand_over: F) -> Self
    where
        F: FnOnce(Socket, OwnedSemaphorePermit) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let boxed: HandOver = Box::new(move |sock, permit| Box::pin(hand_over(sock, permit)));
        Self(Arc::new(Mutex::new(Some(boxed))))
    }

    fn take(&self) -> Option<HandOver> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A request head larger than this is left to hyper (which refuses what it must).
const MAX_HEAD: usize = 16 * 1024;

/// Most headers a request read here may have; more go to hyper.
const MAX_HEADERS: usize = 64;

/// The largest error answer written here (a taken-over route's refusals are small JSON).
const MAX_ANSWER: usize = 64 * 1024;

/// How a connection's first request was read.
pub enum FirstRequest {
    /// Hyper serves the connection, these bytes first.
    Hyper(BytesMut),
    /// An intercepted request (a `GET` without a body, nothing sent after its head).
    Intercepted(Box<Request<Body>>),
    /// The client closed, failed or took longer than `timeout` to send its head.
    Gone,
}

/// Reads the head of a connection's first request, as far as telling whether `intercept`
/// wants it: a request whose line names another path goes to hyper as soon as the line is in.
pub async fn first_request(
    stream: &mut Socket,
    intercept: Intercept,
    timeout: Duration,
) -> FirstRequest {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(decided) = decide(&buf, intercept) {
                return Some(decided);
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Some(Some(req))) => FirstRequest::Intercepted(Box::new(req)),
        Ok(Some(None)) => FirstRequest::Hyper(buf),
        // Half a head, then the end: hyper answers what it makes of it.
        Ok(None) if !buf.is_empty() => FirstRequest::Hyper(buf),
        Ok(None) | Err(_) => FirstRequest::Gone,
    }
}

/// `Some(Some(request))`: intercept it; `Some(None)`: hyper's; `None`: read more.
fn decide(buf: &[u8], intercept: Intercept) -> Option<Option<Request<Body>>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            let line_known = req.version.is_some();
            return if buf.len() >= MAX_HEAD || (line_known && !wants(&req, intercept)) {
                Some(None)
            } else {
                None
            };
        }
        Err(_) => return Some(None),
    };
    let wanted = wants(&req, intercept);
    // A body, or anything sent after the head (a pipelined request), is hyper's to handle.
    let has_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    });
    if !wanted || has_body || len != buf.len() {
        return Some(None);
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(req.path.unwrap_or("/"))
        .version(version);
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    Some(builder.body(Body::empty()).ok())
}

/// Whether `req` (its line parsed) is a `GET` of an intercepted path.
fn wants(req: &httparse::Request<'_, '_>, intercept: Intercept) -> bool {
    req.method == Some("GET") && req.path.is_some_and(|p| intercept(path_of(p)))
}

/// A request target without its query.
fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// Answers an intercepted request: its response head, then the socket to the response's
/// [`TakeOver`]; a response without one (a refusal) is written whole and the connection
/// closed.
pub async fn answer(
    mut stream: Socket,
    req: Request<Body>,
    app: Router,
    permit: OwnedSemaphorePermit,
) {
    let resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (mut parts, body) = resp.into_parts();
    let hand_over = parts.extensions.remove::<TakeOver>().and_then(|t| t.take());
    match hand_over {
        Some(hand_over) => {
            drop(body);
            let written = stream.write_all(&head(&parts, None)).await;
            if written.is_ok() && stream.flush().await.is_ok() {
                hand_over(stream, permit).await;
            }
        }
        None => {
            let bytes = axum::body::to_bytes(body, MAX_ANSWER)
                .await
                .unwrap_or_default();
            let mut out = head(&parts, Some(bytes.len()));
            out.extend_from_slice(&bytes);
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// The status line and headers of `parts`, for a connection that closes after the body:
/// `Content-Length` when the body is known, else none (the body runs to the close).
fn head(parts: &axum::http::response::Parts, content_length: Option<usize>) -> Vec<u8> {
    let status = parts.status;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if ["connection", "content-length", "transfer-encoding", "date"].contains(&name.as_str()) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n");
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    out.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    if let Some(n) = content_length {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Replayed<S> {
    read: BytesMut,
    inner: S,
}

impl<S> Replayed<S> {
    pub fn new(read: BytesMut, inner: S) -> Self {
        Self { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            if self.read.is_empty() {
                // The replayed head's memory goes back now, not with the connection.
                self.read = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Response;

    fn watch(path: &str) -> bool {
        path.ends_with("/watch")
    }

    fn decided(text: &str) -> Option<Option<String>> {
        decide(text.as_bytes(), watch).map(|d| d.map(|r| r.uri().to_string()))
    }

    #[test]
    fn only_a_whole_bodiless_get_of_an_intercepted_path_is_taken() {
        let get = "GET /v1/namespaces/a/watch?since=3 HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(
            decided(get),
            Some(Some("/v1/namespaces/a/watch?since=3".into()))
        );
        // Not yet whole: read more.
        assert_eq!(decided("GET /v1/namespaces/a/watch HTTP/1.1\r\nhost"), None);
        assert_eq!(decided("GET /v1/names"), None);
        // Another path goes to hyper as soon as its line is in.
        assert_eq!(decided("GET /v1/namespaces HTTP/1.1\r\nhost"), Some(None));
        assert_eq!(
            decided("POST /v1/namespaces/a/watch HTTP/1.1\r\n\r\n"),
            Some(None)
        );
        // A body, or a request pipelined after the head: hyper's.
        let with_body = "GET /a/watch HTTP/1.1\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(decided(with_body), Some(None));
        assert_eq!(decided(&format!("{get}GET / HTTP/1.1\r\n\r\n")), Some(None));
        // Garbage, and a head past the bound: hyper's too (it answers 400 or 431).
        assert_eq!(decided("\x16\x03\x01 hello"), Some(None));
        let long = format!("GET /a/watch HTTP/1.1\r\nx: {}", "y".repeat(MAX_HEAD));
        assert_eq!(decided(&long), Some(None));
    }

    #[test]
    fn a_taken_over_head_says_the_body_runs_to_the_close_and_when_it_was_sent() {
        let resp = Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("transfer-encoding", "chunked")
            .header("date", "Thu, 01 Jan 1970 00:00:00 GMT")
            .body(())
            .unwrap_or_default();
        let (parts, ()) = resp.into_parts();
        let text = String::from_utf8(head(&parts, None)).unwrap_or_default();
        let (before_date, date) = text
            .split_once("date: ")
            .unwrap_or_else(|| panic!("no date header: {text}"));
        assert_eq!(
            before_date,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
        );
        let (date, rest) = date.split_once("\r\n").unwrap_or_default();
        let sent = httpdate::parse_http_date(date).unwrap_or(std::time::UNIX_EPOCH);
        let age = std::time::SystemTime::now().duration_since(sent);
        assert!(age.is_ok_and(|a| a.as_secs() < 3600), "date {date:?}");
        assert_eq!(rest, "\r\n", "one date, the head ends: {text}");
        let text = String::from_utf8(head(&parts, Some(7))).unwrap_or_default();
        assert!(text.ends_with("content-length: 7\r\n\r\n"), "{text}");
    }
}
