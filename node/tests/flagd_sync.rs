//! The flagd sync listener's connections: TLS with HTTP/2 (gRPC's ALPN) and a cap on open
//! connections, as on the HTTP listeners. The gRPC service itself is exercised by the stock
//! providers (tests/flagd-providers).

use std::sync::Arc;
use std::time::Duration;

use flagstaff_node::tls::{ServerTls, H2};
use flagstaff_test_cluster::TestCluster;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
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
