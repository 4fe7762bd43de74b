//! Stopping a node drains it: a watch stream on it ends cleanly, so its client knows to move
//! to another node at once rather than seeing a cut connection — a stream hyper serves (one
//! opened after another request on its connection) with the last chunk of its response, one
//! on a connection taken over from hyper (opened by the watch) with a whole last frame and the
//! close its head announced — while a connection that never sent a request does not hold the
//! drain up, and a node stopped and started again in the same process, three times, leaves no
//! task behind on the runtime that served it.
//!
//! The node runs alone on a runtime of its own and the test talks to it with plain blocking
//! sockets, so every task that runtime counts is the node's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use flagstaff_node::NodeConfig;

const TOKEN: &str = "shutdown-test-token";

/// One HTTP/1.1 request on a new connection; the whole answer (the connection closes).
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// A watch of namespace `d`, read up to its snapshot event. With `after`, the connection first
/// serves that request (read whole), so hyper serves the watch too.
fn open_watch(api: SocketAddr, after: Option<&str>) -> (TcpStream, Vec<u8>) {
    let mut watch = TcpStream::connect(api).unwrap();
    watch
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    if let Some(path) = after {
        write!(watch, "GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
        // Its head, then as many bytes as its length says.
        let whole = |seen: &[u8]| {
            let text = String::from_utf8_lossy(seen);
            let (head, body) = text.split_once("\r\n\r\n")?;
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })?;
            Some(body.len() >= length)
        };
        while whole(&seen) != Some(true) {
            let n = watch.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed after {path}");
            seen.extend_from_slice(&buf[..n]);
        }
        seen.clear();
    }
    write!(
        watch,
        "GET /v1/namespaces/d/watch HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
        let n = watch.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before its snapshot");
        seen.extend_from_slice(&buf[..n]);
    }
    (watch, seen)
}

/// The rest of a response, to the close; a cut connection fails the test.
fn read_to_close(watch: &mut TcpStream, mut seen: Vec<u8>, round: usize) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match watch.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("round {round}: the stream was cut, not ended: {e}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !request(addr, "GET", "/readyz", "").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the node never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stopping_node_ends_its_streams_cleanly_and_leaves_no_task_behind() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..4 {
        let (running, api) = rt.block_on(async {
            let client = flagstaff_node::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let peer = flagstaff_node::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let (api, peer_addr) = (client.local_addr().unwrap(), peer.local_addr().unwrap());
            let mut config = NodeConfig::new(
                1,
                dir.path().to_path_buf(),
                format!("http://{api}"),
                format!("http://{peer_addr}"),
            );
            config.cluster_id = (round == 0).then(|| "shutdown-test".to_string());
            config.cluster_secret = "shutdown-test-secret".into();
            config.admin_tokens = vec![("admin".into(), TOKEN.into())];
            let running = flagstaff_node::start(config, client, peer).await.unwrap();
            (running, api)
        });
        if round == 0 {
            let members = format!(
                r#"{{"members":[{{"id":1,"api_addr":"http://{api}","peer_addr":"{}"}}]}}"#,
                running.node.config.advertise_peer
            );
            let init = request(api, "POST", "/v1/cluster/init", &members);
            assert!(init.starts_with("HTTP/1.1 200"), "{init}");
            wait_ready(api);
            let created = request(api, "PUT", "/v1/namespaces/d", "{}");
            assert!(created.starts_with("HTTP/1.1 200"), "{created}");
        }
        wait_ready(api);

        // Two watch streams, open when the node stops: one on a connection taken over from
        // hyper, one that hyper serves.
        let (mut taken, taken_seen) = open_watch(api, None);
        let (mut kept, kept_seen) = open_watch(api, Some("/healthz"));
        // And a connection that never sends a request: the drain must not wait for it.
        let _idle = TcpStream::connect(api).unwrap();

        assert!(
            rt.block_on(running.shutdown()),
            "round {round}: the node did not drain before its deadline"
        );
        let text = read_to_close(&mut kept, kept_seen, round);
        assert!(
            text.contains("transfer-encoding: chunked") && text.ends_with("\r\n0\r\n\r\n"),
            "round {round}: hyper's response did not end with its last chunk: {:?}",
            &text[text.len().saturating_sub(80)..]
        );
        let text = read_to_close(&mut taken, taken_seen, round);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains("connection: close") && !head.contains("transfer-encoding"),
            "round {round}: the taken-over head does not say the body runs to the close: {head}"
        );
        assert!(
            body.starts_with("id: ") && body.ends_with("\n\n"),
            "round {round}: the taken-over stream did not end on a whole frame: {:?}",
            &body[body.len().saturating_sub(80)..]
        );
        // A task that has just returned (a stream's, whose end completed the response) is
        // released at the scheduler's next turn: wait for that, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut alive = rt.metrics().num_alive_tasks();
        while alive > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            alive = rt.metrics().num_alive_tasks();
        }
        assert_eq!(alive, 0, "round {round}: {alive} tasks outlived the node");
    }
}
