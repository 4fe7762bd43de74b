//! flagd's gRPC sync service (`flagd.sync.v1.FlagSyncService`) on `--listen-sync`, so the
//! stock flagd providers of every language evaluate a namespace in-process and follow its
//! changes. Each message is the namespace as one flagd document (the export of
//! `GET /v1/namespaces/{ns}/flagd`, with the namespace and revision in its `metadata`).
//!
//! - Selector: the `flagd-selector` metadata header, else the request's `selector`, as
//!   `flagSetId=<ns>` or a bare `<ns>`. Missing or malformed: `INVALID_ARGUMENT`; an unknown
//!   namespace: `NOT_FOUND`.
//! - Credentials: the namespace's SDK key (or an admin token) as `authorization: Bearer …`
//!   metadata; without one, only the namespaces the operator listed in
//!   `--sync-keyless-namespace` are served, on this listener only.
//! - Consistency: as the SSE watch, a stream is served only while the node can prove its data
//!   is at most `--max-staleness-ms` old; when it cannot, the stream ends with `UNAVAILABLE`
//!   so the provider reconnects (to another node behind the same name). A revoked key ends
//!   its streams with `PERMISSION_DENIED`; a stopping node ends them with `UNAVAILABLE` (the
//!   Node provider reconnects only after an error status).
//! - One assignment per user: a namespace is served to a provider only if every `fractional`
//!   in it hashes as that provider does ([`fractional`]); else `FAILED_PRECONDITION`, at the
//!   start or when a change makes it so. Messages carry flagd's fields only (no
//!   `description`, `tags`, `fractionalAlgorithm`: stock providers refuse unknown fields),
//!   segments that `$ref` segments written out (flagd resolves `$ref` in targeting only), and
//!   a disabled flag with a default variant as that variant (see [`fractional::flagd_only`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{bearer, Caller};
use crate::error::ApiError;
use crate::node::{Consistency, Node};
use crate::tls::ServerTls;
use crate::watch_hub::{CredentialsSeen, HubMessage};

pub mod fractional;
#[allow(clippy::all, missing_docs)]
#[rustfmt::skip]
pub mod proto;

use fractional::Provider;

use proto::flag_sync_service_server::{FlagSyncService, FlagSyncServiceServer};
use proto::{
    FetchAllFlagsRequest, FetchAllFlagsResponse, GetMetadataRequest, GetMetadataResponse,
    SyncFlagsRequest, SyncFlagsResponse,
};

/// Serves the sync service on `listener` until `stopping` resolves; open streams end then.
///
/// Connections are accepted as on the HTTP listeners ([`crate::listener::accept`]): at most the
/// client listener's `max_connections` are open at once (more wait in the kernel's backlog),
/// and a TLS handshake must finish within its header-read timeout.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    stopping: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let limits = node.config.client_listener;
    let accepting = match crate::listener::accept(listener, limits.max_connections, "sync") {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start accepting sync connections");
            return;
        }
    };
    let (ready, incoming) = mpsc::channel(64);
    tokio::spawn(connections(
        accepting,
        tls,
        limits.header_read_timeout,
        ready,
    ));
    let served = tonic::transport::Server::builder()
        // Pings keep idle streams alive through middleboxes and find dead peers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .add_service(FlagSyncServiceServer::new(Sync { node }))
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), stopping)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "sync listener failed");
    }
}

/// Hands accepted connections to the server, after their TLS handshake when `tls` is set
/// (handshakes run side by side, each within `handshake_timeout`). Ends, closing the
/// listening socket, when the server stops taking connections.
async fn connections(
    mut accepting: crate::listener::Accepting,
    tls: Option<Arc<ServerTls>>,
    handshake_timeout: Duration,
    ready: mpsc::Sender<std::io::Result<Connection>>,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let connection = tokio::select! {
            _ = ready.closed() => return,
            accepted = accepting.connections.recv() => {
                let Some((stream, permit)) = accepted else { return };
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => Connection { io: Io::Plain(stream), _permit: permit },
                    Some(tls) => {
                        let handshake = tls.acceptor().accept(stream);
                        handshakes.spawn(async move {
                            let io = tokio::time::timeout(handshake_timeout, handshake).await;
                            let io = io.map_err(|_| "TLS handshake timed out".to_string())?;
                            let io = io.map_err(|e| e.to_string())?;
                            Ok::<_, String>(Connection { io: Io::Tls(Box::new(io)), _permit: permit })
                        });
                        continue;
                    }
                }
            }
            Some(done) = handshakes.join_next() => match done {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "sync connection dropped");
                    continue;
                }
                Err(_) => continue,
            },
        };
        if ready.send(Ok(connection)).await.is_err() {
            return;
        }
    }
}

/// A served connection, holding its place among the listener's `max_connections`.
struct Connection {
    io: Io,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Sync {
    node: Arc<Node>,
}

/// The namespace a request selects: `flagSetId=<ns>` or `<ns>`, from the `flagd-selector`
/// header first, then the body's deprecated `selector`.
fn selected_namespace<T>(req: &Request<T>, body_selector: &str) -> Result<String, Status> {
    let header = req
        .metadata()
        .get("flagd-selector")
        .map(|v| {
            v.to_str()
                .map_err(|_| Status::invalid_argument("flagd-selector: not text"))
        })
        .transpose()?;
    let raw = header.unwrap_or(body_selector).trim();
    if raw.is_empty() {
        return Err(Status::invalid_argument(
            "no selector: send the namespace as `flagSetId=<namespace>` in the flagd-selector \
             header (the provider's selector option)",
        ));
    }
    let ns = match raw.split_once('=') {
        Some(("flagSetId", ns)) => ns.trim(),
        Some((key, _)) => {
            return Err(Status::invalid_argument(format!(
                "selector {raw:?}: only `flagSetId=<namespace>` or a bare namespace is understood, not {key:?}"
            )))
        }
        None => raw,
    };
    crate::names::check_name("selector", ns)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ns.to_string())
}

fn status_of(e: ApiError) -> Status {
    match e {
        ApiError::BadRequest { message, .. } => Status::invalid_argument(message),
        ApiError::Unauthenticated => Status::unauthenticated(
            "missing or unknown key: send the namespace's SDK key as `authorization: Bearer <key>`",
        ),
        ApiError::Forbidden(m) => Status::permission_denied(m),
        ApiError::NotFound(m) => Status::not_found(m),
        ApiError::RateLimited { retry_after_secs } => Status::resource_exhausted(format!(
            "too many sync streams or starts; retry after {retry_after_secs} s"
        )),
        other => Status::unavailable(other.to_string()),
    }
}

impl Sync {
    /// Who may read `ns`: the presented key, or nobody-in-particular where the operator
    /// allowed key-less sync for it.
    fn authorize<T>(&self, req: &Request<T>, ns: &str) -> Result<Option<Caller>, Status> {
        let headers = req.metadata().clone().into_headers();
        match bearer(&headers) {
            Some(secret) => {
                let caller = Caller::of_secret(secret, &self.node).map_err(status_of)?;
                caller.check_namespace(ns).map_err(status_of)?;
                Ok(Some(caller))
            }
            None if self.node.config.sync_keyless_namespaces.contains(ns) => Ok(None),
            None => Err(status_of(ApiError::Unauthenticated)),
        }
    }

    /// The namespace's document for `provider` once this node can prove its bound.
    async fn fresh_document(&self, ns: &str, provider: &Provider) -> Result<(String, u64), Status> {
        let bound = self.node.config.max_staleness;
        self.node
            .read_barrier(Consistency::Bounded(bound), None)
            .await
            .map_err(status_of)?;
        document(&self.node, ns, provider)
    }
}

/// The most a sync document's segments may hold once written out: what the SDK takes as a
/// snapshot.
const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// `{"flags": …, "$evaluators": …, "metadata": {"flagSetId", "flagstaffRevision"}}` in flagd's
/// fields only, the same bytes for the same state (keys sorted), and its namespace revision;
/// `NOT_FOUND` for a namespace that does not exist, `FAILED_PRECONDITION` when `provider`
/// would split users otherwise than Flagstaff (see [`fractional`]).
fn document(node: &Node, ns: &str, provider: &Provider) -> Result<(String, u64), Status> {
    let found = {
        let state = node.state.read();
        state.namespace(ns).map(|space| {
            let (flags, evaluators) = crate::flag_sets::definitions(ns, space);
            (flags, evaluators, space.last_change)
        })
    };
    let (mut flags, evaluators, revision) =
        found.ok_or_else(|| Status::not_found(format!("namespace {ns:?} does not exist")))?;
    provider.check(ns, &flags, &evaluators).inspect_err(|e| {
        // Logged where it is decided, so the operator sees which provider was turned away.
        tracing::warn!(ns, provider = %provider.learnt_from, "sync refused: {}", e.message());
    })?;
    fractional::flagd_only(&mut flags);
    let evaluators =
        fractional::inline_segment_refs(&evaluators, MAX_DOCUMENT_BYTES).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "namespace {ns:?} passes {MAX_DOCUMENT_BYTES} bytes once the segments that \
                 reference segments are written out (flagd resolves $ref in targeting only)"
            ))
        })?;
    let mut doc = Map::new();
    doc.insert("flags".into(), Value::Object(flags));
    if !evaluators.is_empty() {
        doc.insert("$evaluators".into(), Value::Object(evaluators));
    }
    doc.insert(
        "metadata".into(),
        json!({"flagSetId": ns, "flagstaffRevision": revision}),
    );
    Ok((Value::Object(doc).to_string(), revision))
}

fn text(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    }
}

fn number(n: u64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n as f64)),
    }
}

/// `sync_context`: the namespace, its revision, the cluster and the node answering.
fn sync_context(node: &Node, ns: &str, revision: u64) -> prost_types::Struct {
    prost_types::Struct {
        fields: [
            ("flagSetId".to_string(), text(ns)),
            ("flagstaffRevision".to_string(), number(revision)),
            ("flagstaffCluster".to_string(), text(&node.cluster_id)),
            ("flagstaffNode".to_string(), number(node.id)),
        ]
        .into_iter()
        .collect(),
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncFlagsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlagSyncService for Sync {
    type SyncFlagsStream = SyncStream;

    async fn sync_flags(
        &self,
        req: Request<SyncFlagsRequest>,
    ) -> Result<Response<Self::SyncFlagsStream>, Status> {
        self.start_stream(req)
            .await
            .inspect_err(|e| self.node.metrics.sync_refused(e.code()))
    }

    async fn fetch_all_flags(
        &self,
        req: Request<FetchAllFlagsRequest>,
    ) -> Result<Response<FetchAllFlagsResponse>, Status> {
        self.fetch(req)
            .await
            .inspect_err(|e| self.node.metrics.sync_refused(e.code()))
    }

    async fn get_metadata(
        &self,
        _req: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        Ok(Response::new(GetMetadataResponse {
            metadata: Some(prost_types::Struct {
                fields: [
                    ("flagstaffCluster".to_string(), text(&self.node.cluster_id)),
                    ("flagstaffNode".to_string(), text(&self.node.id.to_string())),
                ]
                .into_iter()
                .collect(),
            }),
        }))
    }
}

impl Sync {
    async fn start_stream(
        &self,
        req: Request<SyncFlagsRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let ns = selected_namespace(&req, &req.get_ref().selector)?;
        let caller = self.authorize(&req, &ns)?;
        let provider = Provider::of(req.metadata())?;
        let who = match &caller {
            Some(Caller::Admin(name)) => format!("admin:{name}"),
            Some(Caller::Sdk { hash, .. }) => format!("sdk:{hash}"),
            None => format!("keyless:{ns}"),
        };
        let slot = self.node.watch_streams.acquire(&who).ok_or_else(|| {
            status_of(ApiError::RateLimited {
                retry_after_secs: 5,
            })
        })?;
        self.node.sdk_admission.admit().await.map_err(status_of)?;
        // Subscribe before reading, so no change applied after the read is missed.
        let rx = self.node.hub.subscribe(&ns).ok_or_else(|| {
            Status::unavailable("this node is stopping; reconnect to another node")
        })?;
        let (doc, revision) = self.fresh_document(&ns, &provider).await?;
        let (tx, out) = mpsc::channel(4);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = crate::metrics::Open::new(&node.metrics.sync_streams);
            let stream = Follow {
                node,
                caller,
                provider,
                ns,
            };
            stream.run(doc, revision, rx, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn fetch(
        &self,
        req: Request<FetchAllFlagsRequest>,
    ) -> Result<Response<FetchAllFlagsResponse>, Status> {
        let ns = selected_namespace(&req, &req.get_ref().selector)?;
        self.authorize(&req, &ns)?;
        let provider = Provider::of(req.metadata())?;
        self.node.sdk_admission.admit().await.map_err(status_of)?;
        let (flag_configuration, _) = self.fresh_document(&ns, &provider).await?;
        Ok(Response::new(FetchAllFlagsResponse { flag_configuration }))
    }
}

/// One stream's subscriber.
struct Follow {
    node: Arc<Node>,
    caller: Option<Caller>,
    provider: Provider,
    ns: String,
}

impl Follow {
    fn message(&self, doc: String, revision: u64) -> SyncFlagsResponse {
        SyncFlagsResponse {
            flag_configuration: doc,
            sync_context: Some(sync_context(&self.node, &self.ns, revision)),
        }
    }

    /// The document now, then again after every change to the namespace (changes that
    /// arrive together are sent as one), until the client leaves, the node stops, the node
    /// can no longer prove its bound, the key is revoked, the namespace is deleted or a change
    /// makes it split users otherwise than the provider.
    /// Sends `m`; false when the client has gone. Counts what it sends.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<SyncFlagsResponse, Status>>,
        m: Result<SyncFlagsResponse, Status>,
    ) -> bool {
        match &m {
            Ok(_) => {
                self.node.metrics.sync_messages.inc();
            }
            Err(e) => self.node.metrics.sync_refused(e.code()),
        }
        tx.send(m).await.is_ok()
    }

    async fn run(
        self,
        doc: String,
        mut sent: u64,
        mut rx: broadcast::Receiver<HubMessage>,
        tx: mpsc::Sender<Result<SyncFlagsResponse, Status>>,
    ) {
        let node = &self.node;
        if !self.send(&tx, Ok(self.message(doc, sent))).await {
            return;
        }
        let bound_ms = node.config.max_staleness.as_millis() as u64;
        let mut credentials = CredentialsSeen::default();
        loop {
            let changed = tokio::select! {
                _ = tx.closed() => return,
                message = rx.recv() => match message {
                    Ok(HubMessage::Changes(_) | HubMessage::Reset) => true,
                    // Behind the hub: resynchronise from the state, which is what a message is.
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    // Not a clean end: some stock providers reconnect only after an error status.
                    Err(broadcast::error::RecvError::Closed) => {
                        self.send(&tx, Err(Status::unavailable("this node is stopping; reconnect to another node"))).await;
                        return;
                    }
                    Ok(HubMessage::Tick(tick)) => {
                        let still_valid = || self.caller.as_ref().is_none_or(|c| c.still_valid(node));
                        if credentials.revoked(&tick, still_valid) {
                            self.send(&tx, Err(Status::permission_denied("the SDK key was revoked"))).await;
                            return;
                        }
                        if let Some(msg) = tick.stale_beyond(bound_ms) {
                            let msg = format!("{msg}; reconnect to another node");
                            self.send(&tx, Err(Status::unavailable(msg))).await;
                            return;
                        }
                        false
                    }
                },
            };
            if !changed {
                continue;
            }
            // Coalesce: changes already queued are covered by the one document below (a tick
            // in between is skipped; the next one checks again).
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = rx.try_recv() {}
            match document(node, &self.ns, &self.provider) {
                Ok((doc, revision)) if revision > sent => {
                    sent = revision;
                    if !self.send(&tx, Ok(self.message(doc, revision))).await {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.send(&tx, Err(e)).await;
                    return;
                }
            }
        }
    }
}
