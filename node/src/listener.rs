//! Serving one listener so that no client can hold it: every connection goes through hyper's
//! HTTP/1 with a header-read timeout (which also closes a keep-alive connection that sends no
//! new request for that long), every request body has a deadline for being read whole, and at
//! most `max_connections` connections are open at once (while full, the listener stops
//! accepting, so new connections wait in the kernel's backlog instead of costing memory).
//! [`bind`] makes that backlog as deep as the kernel allows, and a thread per listener takes
//! connections out of it as they arrive, however busy the workers are. A listener may
//! intercept some paths, so that their answer can take its connection over from hyper
//! (`takeover.rs`; the watch stream).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Body, Frame, Incoming};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::takeover::{first_request, FirstRequest, Intercept, Replayed, Socket};
use crate::tls::ServerTls;

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

/// The accept backlog asked of the kernel, which caps it at `net.core.somaxconn` (4,096 by
/// default since Linux 5.4), as Go servers such as etcd do. The runtime's own default is 1,024:
/// when thousands of clients connect at once (every SDK of a fleet after a restart) and the
/// queue is full, Linux drops their handshakes, and a client whose retransmissions all fall on
/// a full queue fails to connect.
const BACKLOG: u32 = 65_535;

/// A listening socket on `addr` with the deepest backlog the kernel allows (and
/// `SO_REUSEADDR`, so a restarted node binds while its old connections are in `TIME_WAIT`).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `app` on `listener` until `stop` resolves, then drains: stops accepting and returns
/// once every open connection has finished its request in flight. A connection's first
/// request of a path `intercept` names is answered without hyper, so that its answer may take
/// the connection over (`takeover.rs`).
///
/// Connections are accepted by a thread of their own ([`AcceptThread`]), not by a task: on a
/// node whose workers are saturated (thousands of streams being served), an accepting task
/// waits its turn behind all of them while the kernel's backlog overflows and handshakes are
/// dropped. The thread takes each connection out of the backlog as it completes, and this
/// task then serves it when it runs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerTls>>,
    limits: ListenerLimits,
    intercept: Option<Intercept>,
    stop: impl Future<Output = ()>,
    name: &'static str,
) {
    // Declared before the connections, so it is dropped after them (see `AcceptThread`).
    let Accepting {
        thread,
        connections: mut accepted,
    } = match accept(listener, limits.max_connections, name) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(listener = name, error = %e, "cannot start accepting");
            return;
        }
    };
    let mut connections = JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Tells connections still in their TLS handshake to give up (the others are told by
    // `graceful`).
    let draining = tokio::sync::watch::Sender::new(false);
    tokio::pin!(stop);
    loop {
        let (stream, permit) = tokio::select! {
            _ = &mut stop => break,
            c = accepted.recv() => match c {
                Some(c) => c,
                None => break,
            },
        };
        // Registers the connection with this task's runtime.
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "cannot serve an accepted connection");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let serving = serve_connection(
            Connection {
                stream,
                permit,
                intercept,
            },
            tls.as_ref().map(|t| t.acceptor()),
            app.clone(),
            limits,
            graceful.watcher(),
            draining.subscribe(),
        );
        connections.spawn(async move {
            if let Err(e) = serving.await {
                tracing::debug!(listener = name, error = %e, "connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Drain: nothing new is accepted; every connection finishes the request it is serving and
    // closes (an idle one at once). The caller bounds how long this may take, and dropping this
    // future cuts what is left.
    drop(thread);
    draining.send_replace(true);
    graceful.shutdown().await;
}

/// An accepted connection: the socket, the permit it holds while open, and the paths its
/// listener intercepts.
struct Connection {
    stream: tokio::net::TcpStream,
    permit: OwnedSemaphorePermit,
    intercept: Option<Intercept>,
}

/// Serves one connection, after a TLS handshake when `tls` is set (bounded by the header-read
/// timeout, so a client that opens a connection and never finishes its handshake holds it no
/// longer than one that sends no request). `graceful` lets the listener's drain wait for it;
/// a handshake still going on when the drain starts is abandoned.
async fn serve_connection(
    connection: Connection,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: ListenerLimits,
    graceful: hyper_util::server::graceful::Watcher,
    mut draining: tokio::sync::watch::Receiver<bool>,
) -> Result<(), axum::BoxError> {
    let Connection {
        stream,
        permit,
        intercept,
    } = connection;
    let body_timeout = limits.body_read_timeout;
    let hyper_app = app.clone();
    let service = TowerToHyperService::new(tower::service_fn(move |req: Request<Incoming>| {
        let req = req.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_timeout)));
        hyper_app.clone().oneshot(req)
    }));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut socket = match tls {
        None => Socket::Plain(stream),
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
            let stream = tokio::select! {
                done = handshake => done.map_err(|_| "TLS handshake timed out")??,
                _ = draining.wait_for(|d| *d) => return Ok(()),
            };
            Socket::Tls(Box::new(stream))
        }
    };
    let read = match intercept {
        None => Default::default(),
        Some(intercept) => {
            let timeout = limits.header_read_timeout;
            // A connection that has not sent its request when the drain starts is closed, as
            // hyper closes an idle one.
            let first = tokio::select! {
                first = first_request(&mut socket, intercept, timeout) => first,
                _ = draining.wait_for(|d| *d) => return Ok(()),
            };
            match first {
                FirstRequest::Hyper(read) => read,
                FirstRequest::Intercepted(req) => {
                    // A stream is no request in flight: the drain does not wait for it (the
                    // watch hub ends it when the node stops).
                    drop(graceful);
                    crate::takeover::answer(socket, *req, app, permit).await;
                    return Ok(());
                }
                FirstRequest::Gone => return Ok(()),
            }
        }
    };
    let io = TokioIo::new(Replayed::new(read, socket));
    graceful.watch(http.serve_connection(io, service)).await?;
    // Held until the connection closes (or by whoever took it over).
    drop(permit);
    Ok(())
}

/// An accepted connection and the permit it holds until it closes.
pub type Accepted = (std::net::TcpStream, OwnedSemaphorePermit);

/// Connections being accepted on a listener: at most `max_connections` hold a permit at once.
/// Dropping it stops accepting and closes the listening socket.
pub struct Accepting {
    thread: AcceptThread,
    /// The accepted connections, in order (non-blocking, to be registered with a runtime).
    pub connections: mpsc::UnboundedReceiver<Accepted>,
}

/// Starts accepting `listener`'s connections on a thread of its own ([`AcceptThread`]).
pub fn accept(
    listener: TcpListener,
    max_connections: usize,
    name: &'static str,
) -> std::io::Result<Accepting> {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let (tx, connections) = mpsc::unbounded_channel();
    let thread = AcceptThread::start(listener, permits, tx, name)?;
    Ok(Accepting {
        thread,
        connections,
    })
}

/// The thread that accepts a listener's connections. Dropping it stops the thread and waits
/// for it (it wakes at once), so the listening socket is closed when [`serve`] ends, however
/// it ends, and a node restarted in the same process can bind the same address again.
struct AcceptThread {
    permits: Arc<Semaphore>,
    /// Closing this end wakes the thread's `poll(2)`.
    wake: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AcceptThread {
    fn start(
        listener: TcpListener,
        permits: Arc<Semaphore>,
        accepted: mpsc::UnboundedSender<Accepted>,
        name: &'static str,
    ) -> std::io::Result<Self> {
        let listener = listener.into_std()?;
        // Non-blocking, so a readiness that turns out stale does not block the thread.
        listener.set_nonblocking(true)?;
        let (wake, woken) = UnixStream::pair()?;
        let thread_permits = permits.clone();
        let thread = std::thread::Builder::new()
            .name(format!("accept-{name}"))
            .spawn(move || accept_loop(listener, woken, thread_permits, accepted, name))?;
        Ok(Self {
            permits,
            wake: Some(wake),
            thread: Some(thread),
        })
    }
}

impl Drop for AcceptThread {
    fn drop(&mut self) {
        // Unblocks a wait for a permit, then a wait for a connection.
        self.permits.close();
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes connections out of the kernel's backlog as fast as they complete, each with one of
/// the listener's connection permits (so at most `max_connections` are open, and while that
/// many are, new ones wait in the backlog), and hands them to [`serve`]. Returns when woken
/// through `woken`, when the permits are closed, or when `serve` stopped listening.
fn accept_loop(
    listener: std::net::TcpListener,
    woken: UnixStream,
    permits: Arc<Semaphore>,
    accepted: mpsc::UnboundedSender<Accepted>,
    name: &'static str,
) {
    loop {
        let Ok(permit) = futures::executor::block_on(permits.clone().acquire_owned()) else {
            return;
        };
        let mut fds = [&listener as &dyn AsRawFd, &woken].map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds for descriptors this function holds, for the call's
        // duration; no timeout.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 || fds[1].revents != 0 {
            // Woken (or poll itself failed, which only a bad descriptor can cause).
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                // The runtime needs it non-blocking (accepted sockets do not inherit that).
                if stream.set_nonblocking(true).is_ok() && accepted.send((stream, permit)).is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: the permit
                // goes back and accepting resumes after a short pause.
                tracing::warn!(listener = name, error = %e, "accept failed");
                drop(permit);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
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
