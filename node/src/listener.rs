//! Serving one listener so that no client can hold it: every connection goes through hyper's
//! HTTP/1 with a header-read timeout (which also closes a keep-alive connection that sends no
//! new request for that long), every request body has a deadline for being read whole, and at
//! most `max_connections` connections are open at once (while full, the listener stops
//! accepting, so new connections wait in the kernel's backlog instead of costing memory).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Body, Frame, Incoming};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long a client may take and how many connections it may hold, per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// From accepting a connection (or finishing a response on it) to the end of the next
    /// request's headers; a connection that sends nothing, or trickles its headers, for longer
    /// is closed.
    pub header_read_timeout: Duration,
    /// From the start of a request to the last byte of its body: a slower upload is cut off
    /// (the handler answers 408).
    pub body_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` resolves; then the open connections are dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    stop: impl Future<Output = ()>,
    name: &'static str,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was accepted: the
                    // permit goes back and accepting resumes after a short pause.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let body_timeout = limits.body_read_timeout;
        let app = app.clone();
        let service = TowerToHyperService::new(tower::service_fn(move |req: Request<Incoming>| {
            let req = req.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_timeout)));
            app.clone().oneshot(req)
        }));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        connections.spawn(async move {
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(listener = name, error = %e, "connection ended");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
}

/// The deadline for reading a request body whole ran out.
#[derive(Debug)]
pub struct BodyDeadline(pub Duration);

impl std::fmt::Display for BodyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body was not received within {:?}", self.0)
    }
}

impl std::error::Error for BodyDeadline {}

/// A request body that fails with [`BodyDeadline`] once its deadline (set when the request
/// arrived) passes, however the bytes trickle in.
struct DeadlineBody<B> {
    body: B,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl<B> DeadlineBody<B> {
    fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            timeout,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyDeadline(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The deadline, if a body-reading error is that deadline running out (anywhere in its source
/// chain).
pub fn body_deadline<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyDeadline> {
    let mut e = Some(error);
    while let Some(err) = e {
        if let Some(d) = err.downcast_ref::<BodyDeadline>() {
            return Some(d);
        }
        e = err.source();
    }
    None
}
