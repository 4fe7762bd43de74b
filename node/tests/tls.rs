//! TLS: HTTPS on the client listener, mutual TLS between nodes, the cluster secret kept from
//! endpoints that cannot prove they are nodes of the cluster, and certificates reloaded
//! without a restart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flagstaff_node::config::{PeerTlsFiles, TlsFiles};
use flagstaff_node::metrics::ReloadOutcome;
use flagstaff_node::peer::{PeerClient, PATH_STATUS};
use flagstaff_node::tls::ca::Authority;
use flagstaff_node::tls::ServerTls;
use flagstaff_test_cluster::{bool_flag, TestCluster, SECRET};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;

fn client_trusting(ca: &std::path::Path) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
    for cert in flagstaff_node::tls::ca_certificates(ca).unwrap() {
        b = b.add_root_certificate(cert);
    }
    b
}

/// Writes a certificate from `ca` and its key under `dir` as `name.pem`, `name-key.pem`.
fn write_issued(ca: &Authority, dir: &std::path::Path, name: &str) -> TlsFiles {
    let issued = ca.issue(name, &["127.0.0.1".into()]).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.cert, issued.cert_pem).unwrap();
    std::fs::write(&files.key, issued.key_pem).unwrap();
    files
}

/// A listener on 127.0.0.1 that answers every request 200 and counts them; TLS with `tls`.
async fn counting_server(tls: Option<ServerTls>) -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    });
    let listener = flagstaff_node::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flagstaff_node::listener::serve(
        listener,
        app,
        tls.map(Arc::new),
        flagstaff_node::NodeConfig::DEFAULT_PEER_LISTENER,
        None,
        std::future::pending(),
        "counting",
    ));
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_https_and_talks_raft_only_with_certificates_of_its_ca() {
    let c = TestCluster::start_tls(3, |_| {}).await;
    let tls = c.tls.as_ref().unwrap();
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);

    // Writes through a follower reach the leader over mutual TLS; every node serves them.
    c.create_namespace(follower, "secure").await;
    let (s, b) = c
        .put(follower, "/v1/namespaces/secure/flags/f", bool_flag("on"))
        .await;
    assert_eq!(s, 200, "{b}");
    for n in 1..=3 {
        let (s, b) = c.get(n, "/v1/namespaces/secure/flags/f").await;
        assert_eq!(s, 200, "node {n}: {b}");
        assert_eq!(b["definition"]["defaultVariant"], "on", "node {n}: {b}");
    }

    // The client listener speaks only TLS, with a certificate of the cluster's CA.
    let api = c.node(1).client_addr;
    let plain = reqwest::Client::new()
        .get(format!("http://{api}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let untrusting = reqwest::Client::new()
        .get(format!("https://{api}/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err(), "a client without the CA connected");

    // The peer listener wants a client certificate of this cluster's CA: none, or one from
    // another CA, and no request gets through; with one, the request reaches the listener
    // (which still wants the cluster secret: 401).
    let peer = format!("https://{}{PATH_STATUS}", c.proxies[0].listen);
    let anonymous = client_trusting(&tls.ca).build().unwrap();
    assert!(anonymous.post(&peer).send().await.is_err());
    let dir = tempfile::tempdir().unwrap();
    let foreign_ca = Authority::generate("another CA").unwrap();
    let foreign = write_issued(&foreign_ca, dir.path(), "stranger");
    let mut pem = std::fs::read(&foreign.cert).unwrap();
    pem.extend(std::fs::read(&foreign.key).unwrap());
    let stranger = client_trusting(&tls.ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    assert!(stranger.post(&peer).send().await.is_err());
    let own = tls.node_files(2);
    let mut pem = std::fs::read(&own.cert).unwrap();
    pem.extend(std::fs::read(&own.key).unwrap());
    let member = client_trusting(&tls.ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let r = member.post(&peer).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // The peer client sends the cluster secret to no endpoint that fails to prove it holds a
    // certificate of the cluster's CA: not over plain HTTP, not to another CA's certificate.
    let peers = PeerClient::new(
        SECRET.into(),
        c.cluster_id.clone(),
        None,
        Some(PeerTlsFiles {
            identity: tls.node_files(1),
            trusted_ca: tls.ca.clone(),
        }),
    )
    .unwrap();
    let (plain_addr, plain_seen) = counting_server(None).await;
    let impostor_tls = ServerTls::load(foreign.clone(), None).unwrap();
    let (impostor_addr, impostor_seen) = counting_server(Some(impostor_tls)).await;
    for url in [
        format!("http://{plain_addr}"),
        format!("https://{impostor_addr}"),
    ] {
        let r: Result<serde_json::Value, _> = peers
            .call(&url, PATH_STATUS, &(), Duration::from_secs(2))
            .await;
        assert!(r.is_err(), "{url} was called");
    }
    assert_eq!(plain_seen.load(Ordering::SeqCst), 0);
    assert_eq!(impostor_seen.load(Ordering::SeqCst), 0);
    // A member whose peer address does not hold such a certificate is not added either.
    let (s, b) = c
        .post(
            leader,
            "/v1/cluster/learners",
            json!({"id": 9, "api_addr": format!("https://{impostor_addr}"),
                   "peer_addr": format!("https://{impostor_addr}")}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(impostor_seen.load(Ordering::SeqCst), 0);
    c.shutdown().await;
}

/// The leaf certificate the client listener at `addr` presents now.
async fn served_certificate(addr: SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn reloads(c: &TestCluster, id: u64, outcome: &'static str) -> u64 {
    let node = &c.node(id).running.as_ref().unwrap().node;
    node.metrics
        .tls_reloads
        .get_or_create(&ReloadOutcome { outcome })
        .get()
}

/// Waits (at most 15 s: the files are looked at every 2 s) until `done` holds.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_reload_without_a_restart_and_a_broken_file_keeps_the_old_ones() {
    let c = TestCluster::start_tls(3, |_| {}).await;
    let tls = c.tls.as_ref().unwrap();
    let addr = c.node(1).client_addr;
    let first = std::fs::read_to_string(tls.node_files(1).cert).unwrap();
    assert_eq!(served_certificate(addr, &tls.ca).await, der_of(&first));

    // A renewed certificate written over the files is served without a restart.
    let renewed = tls.issue(1, "node 1 renewed");
    eventually("the renewed certificate served", async || {
        served_certificate(addr, &tls.ca).await == der_of(&renewed)
    })
    .await;
    assert!(reloads(&c, 1, "reloaded") >= 1);
    // Node 1 still talks Raft with the others under its new certificate.
    c.create_namespace(1, "after-renewal").await;

    // A key that no longer fits is refused; the node keeps serving the renewed certificate.
    let files = tls.node_files(1);
    let other_key = Authority::generate("unrelated").unwrap();
    let unrelated = other_key.issue("x", &["127.0.0.1".into()]).unwrap();
    // Counted from here: writing the renewal's key before its certificate may itself have
    // failed one reload in between.
    let failed_before = reloads(&c, 1, "failed");
    std::fs::write(&files.key, unrelated.key_pem).unwrap();
    eventually("the broken key refused", async || {
        reloads(&c, 1, "failed") > failed_before
    })
    .await;
    assert_eq!(served_certificate(addr, &tls.ca).await, der_of(&renewed));
    c.create_namespace(1, "after-refusal").await;

    // SIGHUP reloads too, with no file changed (the watcher has been running all along, so
    // the signal is handled, not fatal).
    let renewed_again = tls.issue(1, "node 1 renewed again");
    eventually("the second renewal served", async || {
        served_certificate(addr, &tls.ca).await == der_of(&renewed_again)
    })
    .await;
    let before = reloads(&c, 1, "reloaded");
    // SAFETY: kill(2) on this process, whose SIGHUP the node handles.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
    eventually("a reload on SIGHUP", async || {
        reloads(&c, 1, "reloaded") > before
    })
    .await;
    c.shutdown().await;
}

/// The body of `resp` read until `pattern` appears (bounded); `None` if it ends or fails first.
async fn read_until(resp: &mut reqwest::Response, seen: &mut String, pattern: &str) -> Option<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(pattern) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .ok()?
            .ok()??;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_over_tls_on_its_own_connection_leaves_hyper_and_ends_with_close_notify() {
    let mut c = TestCluster::start_tls(3, |_| {}).await;
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);
    c.create_namespace(leader, "secure").await;
    let tls = c.tls.as_ref().unwrap();
    // A client that keeps no idle connection: the watch opens one of its own.
    let client = client_trusting(&tls.ca)
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("{}/v1/namespaces/secure/watch", c.node(follower).api);
    let mut watch = client
        .get(&url)
        .bearer_auth(flagstaff_test_cluster::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    assert_eq!(
        watch.headers().get("connection").map(|v| v.as_bytes()),
        Some(b"close".as_slice()),
        "the watch was not taken over: {:?}",
        watch.headers()
    );
    let mut seen = String::new();
    read_until(&mut watch, &mut seen, "event: snapshot")
        .await
        .expect("a snapshot");
    let (s, b) = c
        .put(leader, "/v1/namespaces/secure/flags/f", bool_flag("on"))
        .await;
    assert_eq!(s, 200, "{b}");
    read_until(&mut watch, &mut seen, "event: change")
        .await
        .expect("the change, through the writer shard's TLS session");
    // Stopping the node ends the stream as TLS ends a connection: a clean end of the body.
    c.stop(follower).await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the stream did not end");
    assert!(end.is_ok(), "the stream was cut: {end:?}");
    c.shutdown().await;
}
