//! The client listener cannot be held by its clients: idle and trickling connections are
//! closed at the header-read timeout while other clients are served, a trickling body is cut
//! off with 408, connections over the cap wait until one closes, and an unauthenticated
//! request is refused before its body is read or any `min_revision` is waited for. A watch
//! head, which the listener reads itself before hyper, is bounded the same way.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, TOKEN};
use flagstaff_node::config::ListenerLimits;
use flagstaff_node::NodeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
const BODY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Far longer than any timeout above: a wait that reaches it is a failure.
const LONG: Duration = Duration::from_secs(20);

fn short_timeouts(c: &mut NodeConfig) {
    c.client_listener = ListenerLimits {
        header_read_timeout: HEADER_TIMEOUT,
        body_read_timeout: BODY_TIMEOUT,
        max_connections: 1_000,
    };
}

const CAP: usize = 16;

fn small_cap(c: &mut NodeConfig) {
    c.client_listener = ListenerLimits {
        header_read_timeout: Duration::from_secs(60),
        body_read_timeout: Duration::from_secs(60),
        max_connections: CAP,
    };
}

fn addr(c: &TestCluster) -> std::net::SocketAddr {
    c.node(1).client_addr
}

/// Reads until the server closes the connection (or `LONG` passes); returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the server never closed the connection");
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server never closed the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_trickling_connections_are_closed_while_others_are_served() {
    let c = TestCluster::start(1, short_timeouts).await;
    c.wait_leader().await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(addr(&c)).await.unwrap());
    }
    // Trickling headers: one byte every 50 ms, never finishing the header block.
    let mut trickling = Vec::new();
    for _ in 0..20 {
        // The server's timer starts at accept, after this: it cannot close sooner than this
        // plus the timeout, however late the task below first runs.
        let started = Instant::now();
        let mut s = TcpStream::connect(addr(&c)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        trickling.push(tokio::spawn(async move {
            loop {
                if s.write_all(b"X").await.is_err() {
                    break;
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    // An error answer before closing is fine; a served request is not.
                    Ok(Ok(n)) => {
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        assert!(
                            !text.starts_with("HTTP/1.1 2"),
                            "a trickled request was served: {text}"
                        );
                        break;
                    }
                    Err(_) => {}
                }
                assert!(
                    started.elapsed() < LONG,
                    "a trickling connection was never closed"
                );
            }
            started.elapsed()
        }));
    }
    // Meanwhile other clients are served.
    for i in 0..50 {
        let (s, b) = c.get(1, "/v1/namespaces").await;
        assert_eq!(s, 200, "request {i}: {b}");
    }
    for mut s in idle {
        assert!(read_to_close(&mut s).await.is_empty());
    }
    for t in trickling {
        let held = t.await.unwrap();
        assert!(held >= HEADER_TIMEOUT / 2, "closed after {held:?}");
    }
    let (s, _) = c.get(1, "/v1/namespaces").await;
    assert_eq!(s, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickling_body_is_cut_off_with_408_and_unauthenticated_requests_cost_nothing() {
    let c = TestCluster::start(1, short_timeouts).await;
    c.wait_leader().await;

    let mut s = TcpStream::connect(addr(&c)).await.unwrap();
    let head = format!(
        "PUT /v1/namespaces/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        // One byte every 100 ms: 100 bytes would take 10 s, ten times the deadline.
        for _ in 0..99 {
            if w.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + LONG;
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("no answer to the trickling body: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    writer.abort();
    let (status, _) = c.get(1, "/v1/namespaces/slow").await;
    assert_eq!(status, 404, "the cut-off write must not have happened");

    // An unknown token with a body that never comes: refused at once (401), not after the
    // body deadline (which would be 408).
    for path in [
        "/ofrep/v1/evaluate/flags/f",
        "/ofrep/v1/evaluate/flags",
        "/v1/namespaces/x/flags/f",
    ] {
        let mut s = TcpStream::connect(addr(&c)).await.unwrap();
        let method = if path.starts_with("/ofrep") {
            "POST"
        } else {
            "PUT"
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\
             Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(LONG, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 401"), "{path}: {text}");
    }
    // An unknown token with a `min_revision` far ahead: 401, not a wait ending in 503/504.
    let r = c
        .http
        .get(format!(
            "{}/v1/namespaces?consistency=bounded&min_revision=999999",
            c.node(1).api
        ))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let c = TestCluster::start(1, small_cap).await;
    c.wait_leader().await;
    // The cluster's own client may hold pooled connections: use up the rest of the cap.
    let mut held = Vec::new();
    while held.len() < CAP {
        held.push(TcpStream::connect(addr(&c)).await.unwrap());
    }
    let url = format!("{}/healthz", c.node(1).api);
    let fresh = reqwest::Client::builder().timeout(LONG).build().unwrap();
    let waiting = tokio::spawn(async move { fresh.get(url).send().await.map(|r| r.status()) });
    // While every slot is held, the new request is not served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection over the cap was served"
    );
    // Closing held connections frees slots (the cluster's pooled ones may take some first).
    for s in held.drain(..) {
        drop(s);
        if waiting.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = waiting.await.unwrap().expect("served once a slot was free");
    assert_eq!(status, 200);
    c.shutdown().await;
}

/// Sends `head` on a new connection and reads the answer to the close.
async fn answer_to(c: &TestCluster, head: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(c)).await.unwrap();
    s.write_all(head).await.unwrap();
    String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_head_read_before_hyper_is_bounded_and_a_bad_one_refused() {
    let c = TestCluster::start(1, short_timeouts).await;
    c.wait_leader().await;
    // Read by the listener itself (the first request, a watch): refused without a credential,
    // with its length, and the connection closed.
    let text = answer_to(
        &c,
        b"GET /v1/namespaces/x/watch HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.contains("connection: close") && text.contains("content-length: "),
        "{text}"
    );
    // A head past the 16 KiB the listener reads is left to hyper, which answers it.
    let mut big = b"GET /v1/namespaces/x/watch HTTP/1.1\r\nHost: x\r\nx-pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let text = answer_to(&c, &big).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    // A malformed head on the watch path: hyper's 400.
    let text = answer_to(
        &c,
        b"GET /v1/namespaces/x/watch HTTP/1.1\r\nno colon\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // A watch head that trickles in is closed (at the header-read timeout), never served.
    let mut s = TcpStream::connect(addr(&c)).await.unwrap();
    s.write_all(b"GET /v1/namespaces/x/watch HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        assert!(
            started.elapsed() < LONG,
            "a trickled watch head was never closed"
        );
        if s.write_all(b"X").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => panic!(
                "a trickled watch head was answered: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
    }
    // And the listener still serves.
    let (status, _) = c.get(1, "/v1/namespaces").await;
    assert_eq!(status, 200);
    c.shutdown().await;
}
