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

/// Opens a SyncFlags stream to `addr` for namespace `ns` as a client whose gRPC user-agent
/// starts with `agent`, with the admin token.
async fn sync_flags(
    addr: std::net::SocketAddr,
    agent: &'static str,
    ns: &str,
) -> Result<tonic::Streaming<SyncFlagsResponse>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .user_agent(agent)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(SyncFlagsRequest::default());
    let md = req.metadata_mut();
    md.insert("flagd-selector", format!("flagSetId={ns}").parse().unwrap());
    md.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(SYNC_FLAGS);
    let codec = tonic_prost::ProstCodec::<SyncFlagsRequest, SyncFlagsResponse>::default();
    grpc.server_streaming(req, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// The next message, or the status that ended the stream; bounded by 30 s.
async fn next(stream: &mut tonic::Streaming<SyncFlagsResponse>) -> Result<Value, tonic::Status> {
    let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("neither a message nor an end within 30 s")?
        .expect("the stream ended without a status");
    Ok(serde_json::from_str(&m.flag_configuration).unwrap())
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
        let doc = next(&mut py).await.expect("a document");
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
    let refused = sync_flags(addr, NODE, "web").await.expect_err("refused");
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
        match next(&mut py).await {
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
    next(&mut node_stream).await.expect("a document");

    // Cut off from the others, the node can no longer prove its bound: UNAVAILABLE.
    c.isolate(f);
    let ended = loop {
        match next(&mut node_stream).await {
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
