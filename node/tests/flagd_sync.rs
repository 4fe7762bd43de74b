//! The flagd sync listener: its connections (TLS with HTTP/2, gRPC's ALPN, and a cap on open
//! connections, as on the HTTP listeners) and the service's answers through a gRPC client that
//! presents itself as a stock provider would (flagd's fields only, the revision, refusal of a
//! provider that would split users otherwise, `UNAVAILABLE` once the node cannot prove its
//! bound). The stock providers themselves run in tests/flagd-providers.

use std::sync::Arc;
use std::time::Duration;

use flagstaff_node::flagd_sync::proto::{SyncFlagsRequest, SyncFlagsResponse};
use flagstaff_node::tls::{ServerTls, H2};
use flagstaff_test_cluster::{TestCluster, TOKEN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const CAP: usize = 2;

fn connector(ca: &std::path::Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Sends HTTP/2's client preface and an empty SETTINGS frame, and reads the first frame's
/// header back: the server's SETTINGS (type 4) shows the connection is being served.
async fn first_frame_type(tls: &mut TlsStream<TcpStream>) -> u8 {
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut header))
        .await
        .expect("the server sent no frame")
        .unwrap();
    header[3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sync_listener_speaks_h2_over_tls_and_holds_at_most_its_connection_cap() {
    let c = TestCluster::start_tls(1, |c| c.client_listener.max_connections = CAP).await;
    let tls = c.tls.as_ref().unwrap();
    let node = c.node(1).running.as_ref().unwrap().node.clone();
    let server_tls = ServerTls::load_for(tls.node_files(1), None, H2).unwrap();
    let listener = flagstaff_node::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flagstaff_node::flagd_sync::serve(
        node,
        listener,
        Some(Arc::new(server_tls)),
        std::future::pending(),
    ));
    let connector = connector(&tls.ca);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connect = || {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await
        }
    };

    let mut open = Vec::new();
    for i in 0..CAP {
        let mut tls = connect()
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(first_frame_type(&mut tls).await, 4, "connection {i}");
        open.push(tls);
    }

    // One more waits in the backlog: its handshake gets no answer while the cap is full...
    let mut waiting = tokio::spawn(connect());
    let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
    assert!(early.is_err(), "a connection past the cap was served");
    // ...and is served as soon as one of the open ones closes.
    drop(open.pop());
    let mut late = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting connection was not served after one closed")
        .unwrap()
        .unwrap();
    assert_eq!(first_frame_type(&mut late).await, 4);
    c.shutdown().await;
}

const SYNC_FLAGS: &str = "/flagd.sync.v1.FlagSyncService/SyncFlags";

/// A SyncFlags stream as a client sees it: messages, then the status that ends it.
struct SyncStream {
    body: Option<h2::RecvStream>,
    buf: bytes::BytesMut,
    /// The status of a response that ended at its headers (an immediate refusal).
    ended: Option<tonic::Status>,
}

/// The gRPC status in a response's headers or trailers (`None`: OK or none there).
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Status> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    (code != 0).then(|| tonic::Status::new(tonic::Code::from_i32(code), message))
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a SyncFlags stream to `addr` for namespace `ns` as a client whose gRPC user-agent
/// starts with `agent`, with the admin token: `Err` for a refusal at the start.
async fn sync_flags(
    addr: std::net::SocketAddr,
    agent: &'static str,
    ns: &str,
) -> Result<SyncStream, tonic::Status> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}{SYNC_FLAGS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", format!("{agent} test-client"))
        .header("flagd-selector", format!("flagSetId={ns}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let message = prost::Message::encode_to_vec(&SyncFlagsRequest::default());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    send.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    if let Some(status) = status_in(response.headers()) {
        return Err(status);
    }
    Ok(SyncStream {
        body: Some(response.into_body()),
        buf: bytes::BytesMut::new(),
        ended: None,
    })
}

impl SyncStream {
    /// The next document, or the status that ended the stream; bounded by 30 s.
    async fn next(&mut self) -> Result<Value, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(30), self.read())
            .await
            .expect("neither a message nor an end within 30 s")
    }

    async fn read(&mut self) -> Result<Value, tonic::Status> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let frame = self.buf.split_to(5 + len);
                    let m: SyncFlagsResponse = prost::Message::decode(&frame[5..]).unwrap();
                    return Ok(serde_json::from_str(&m.flag_configuration).unwrap());
                }
            }
            if let Some(status) = self.ended.clone() {
                return Err(status);
            }
            let body = self.body.as_mut().expect("read after the end");
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = body.trailers().await.unwrap().unwrap_or_default();
                    let status = status_in(&trailers)
                        .unwrap_or_else(|| tonic::Status::ok("the stream ended"));
                    self.ended = Some(status);
                }
            }
        }
    }
}

fn split(algorithm: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
        "fractionalAlgorithm": algorithm, "targeting": {"fractional": [["a", 1], ["b", 1]]}})
}

const PYTHON: &str = "grpc-python/1.76.0";
const NODE: &str = "grpc-node-js/1.14.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_serves_flagd_fields_to_a_provider_that_splits_alike_and_ends_streams_it_cannot_serve()
{
    let c = TestCluster::start(3, |c| c.max_staleness = Duration::from_millis(1000)).await;
    let leader = c.wait_leader().await;
    let f = c.follower_of(leader);
    let node = c.node(f).running.as_ref().unwrap().node.clone();
    let listener = flagstaff_node::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flagstaff_node::flagd_sync::serve(
        node.clone(),
        listener,
        None,
        std::future::pending(),
    ));
    c.create_namespace(leader, "web").await;
    let plain = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
        "defaultVariant": "on", "description": "d", "tags": ["t"], "metadata": {"owner": "web"}});
    let (s, b) = c.put(leader, "/v1/namespaces/web/flags/plain", plain).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .put(leader, "/v1/namespaces/web/flags/split", split("v3"))
        .await;
    assert_eq!(s, 200, "{b}");
    let revision = b["revision"].as_u64().unwrap();

    // A v3 (Python) provider is served, flagd's fields only, at the namespace's revision.
    let mut py = sync_flags(addr, PYTHON, "web").await.expect("served");
    let doc = loop {
        let doc = py.next().await.expect("a document");
        if doc["metadata"]["flagstaffRevision"].as_u64() >= Some(revision) {
            break doc;
        }
    };
    assert_eq!(
        doc["flags"]["plain"],
        json!({"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "on", "metadata": {"owner": "web"}})
    );
    assert!(
        doc["flags"]["split"].get("fractionalAlgorithm").is_none(),
        "{doc}"
    );

    // A v2 (Node) provider is refused, with the flag named.
    let Err(refused) = sync_flags(addr, NODE, "web").await else {
        panic!("a v2 provider was served a v3 split");
    };
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("split (v3)"),
        "{}",
        refused.message()
    );

    // Switching the flag to v2 ends the Python stream the same way.
    let (s, b) = c
        .put(leader, "/v1/namespaces/web/flags/split", split("v2"))
        .await;
    assert_eq!(s, 200, "{b}");
    let ended = loop {
        match py.next().await {
            Ok(_) => continue, // a document from before the change
            Err(e) => break e,
        }
    };
    assert_eq!(ended.code(), tonic::Code::FailedPrecondition, "{ended:?}");
    assert!(
        ended.message().contains("split (v2)"),
        "{}",
        ended.message()
    );
    let mut node_stream = sync_flags(addr, NODE, "web").await.expect("now served");
    node_stream.next().await.expect("a document");

    // Cut off from the others, the node can no longer prove its bound: UNAVAILABLE.
    c.isolate(f);
    let ended = loop {
        match node_stream.next().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    let metrics = node.render_metrics();
    for code in ["FailedPrecondition", "Unavailable"] {
        let line = format!("flagstaff_sync_refusals_total{{grpc_code=\"{code}\"}}");
        assert!(metrics.contains(&line), "{code} not counted:\n{metrics}");
    }
    c.heal();
    c.shutdown().await;
}
